"""`make bench`: run every benchmarks/bench_*.py module's run() and write benchmarks/out/results.{json,md}."""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ism.system import machine

OUT = Path(__file__).resolve().parent / "out"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=None, help="bench module names (e.g. bench_train)")
    args = ap.parse_args(argv)
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    if args.only:
        names = [n for n in names if n in args.only]
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "python": sys.version.split()[0], "torch": torch.__version__,
            "cpus": __import__("os").cpu_count(), "machine": platform.machine(), "cuda": torch.cuda.is_available(),
            "cpu": machine.describe()}
    rows = []
    for name in names:
        t0 = time.perf_counter()
        mod = importlib.import_module(f"benchmarks.{name}")
        print(f"[bench] {name} ...", flush=True)
        got = mod.run()
        for r in got:
            r.setdefault("benchmark", name)
            r.setdefault("cpu", meta["cpu"])  # beside every figure: results from different CPUs do not compare
        rows += got
        print(f"[bench] {name} done in {time.perf_counter() - t0:.0f}s", flush=True)
        (OUT / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": got}, indent=2))
    if args.only is None:
        (OUT / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = ["# ism benchmarks", "", f"{meta}", "", "| benchmark | case | value | unit | goal | note | CPU |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["value"]
        md.append(f"| {r['benchmark']} | {r['case']} | {f'{v:.4g}' if isinstance(v, float) else v} | "
                  f"{r.get('unit', '')} | {r.get('goal', '')} | {r.get('note', '')} | {r['cpu']} |")
    (OUT / ("results.md" if args.only is None else f"results-{'-'.join(args.only)}.md")).write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
