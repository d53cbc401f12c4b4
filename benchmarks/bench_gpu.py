"""The GPU path measured in one command: `python -m benchmarks.bench_gpu` (<= 8 min on one modern GPU).

Writes benchmarks/out/gpu.json and gpu.md (or --out DIR) with, on synthetic 4x32x32 "latents" (1,000 classes, the
shape of ImageNet-256 SD-VAE latents) through the real trainer (imagenet-latents-gpu preset, bf16 autocast):
  * seconds per train step of SM and of full iSM (intrinsic guidance + wavelet loss + sOT K=32 + twin EMA) at batch
    256 on DiT-B/2 (--model dit-xl/2 for the paper's model), and their ratio;
  * the sOT solve of one K=32 pool (8,192 pairs) on the GPU: the sparse solver on the global pool, the default class
    coupling (auto solver), and the exact solver for reference, each as a share of 32 SM steps; plus the trainer's
    own ot/wait_s with the prefetch thread;
  * peak GPU memory of each training;
  * sampling throughput (images/s) at 1 and 128 steps.
`--tiny` runs the same code on CPU at toy size (dit-tiny/4, batch 8, K=4) in seconds: tests/test_bench_gpu.py runs
it, so the script cannot rot between GPU sessions. `make bench` calls run(), which does the full check on CUDA only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ism.system import machine

OUT = Path(__file__).resolve().parent / "out"
FULL_ISM = {"guidance.mode": "intrinsic", "wavelet.enabled": True, "ot.enabled": True, "ema.twin": True}
SIZES = {  # model, batch, K, train steps per variant (the last K-step pool is the timed window), samples
    "full": {"model": "dit-b/2", "batch": 256, "k": 32, "steps": 96, "samples": 256, "device": "cuda"},
    "tiny": {"model": "dit-tiny/4", "batch": 8, "k": 4, "steps": 8, "samples": 4, "device": "cpu"},
}


def _latents(root: Path, n: int, classes: int = 1000) -> Path:
    """A synthetic latents shard: n N(0, 1) items of 4x32x32 with uniform labels (values do not change the timing)."""
    g = np.random.default_rng(0)
    np.savez(root / "latents.npz", x=g.standard_normal((n, 4, 32, 32), dtype=np.float32),
             y=g.integers(0, classes, n))
    return root


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _train(name: str, overrides: dict, size: dict, data_dir: Path, tmp: Path, device: str) -> dict:
    """Train `steps` steps through the real trainer; stats of the last K steps (one pool, warm-up excluded)."""
    from ism.conf.config import resolve
    from ism.training.train import train
    k = size["k"]
    cfg = resolve("imagenet-latents-gpu", overrides={
        "data.path": str(data_dir), "model.name": size["model"], "optim.batch_size": size["batch"],
        "ot.pool_batches": k, "run.steps": size["steps"], "run.log_every": k, "run.checkpoint_every": size["steps"],
        "run.device": device, "run.precision": "bf16" if device.startswith("cuda") else "fp32",
        "run.progress": False, "run.out_dir": str(tmp), "eval.at_end": False, **overrides})
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    summary = train(cfg, run_dir=tmp / name)
    lines = [json.loads(ln) for ln in (tmp / name / "stats.jsonl").read_text().splitlines() if ln.strip()]
    last = lines[-1]
    return {"sec_per_step": float(last["sec_per_step"]), "peak_mem_mb": float(summary["peak_mem_mb"]),
            "ot_wait_s": float(last.get("ot/wait_s", 0.0)), "ot_solve_s": float(last.get("ot/solve_s", 0.0)),
            "params": summary["params"], "run_dir": str(tmp / name)}


def _pool_solves(size: dict, data_dir: Path, device: str) -> dict:
    """Seconds to solve one K-batch pool (K*B pairs) on `device`: sparse/global, auto/class (1,000 classes: ~8-pair
    sub-problems, exact), exact/global (scipy on the CPU whatever the device: the reference the others are timed
    against)."""
    from ism.training.objective.coupling import ot_assign
    z = np.load(data_dir / "latents.npz")
    n = size["k"] * size["batch"]
    x1, y = torch.from_numpy(z["x"][:n]), torch.from_numpy(z["y"][:n])
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(1))
    out = {}
    for name, solver, labels in (("sparse_global", "sparse", None), ("auto_class", "auto", y),
                                 ("exact_global", "exact", None)):
        warm = min(n, 2048) if solver == "sparse" else 64  # 2,048: the sparse solver's bf16 kernels
        ot_assign(x0[:warm], x1[:warm], solver=solver, device=device)  # warm-up (CUDA context, kernels)
        _sync(device)
        t0 = time.perf_counter()
        _, diag = ot_assign(x0, x1, labels=labels, solver=solver, device=device)
        _sync(device)
        out[name] = {"s": time.perf_counter() - t0, "cost_after": diag["ot/cost_after"],
                     "cost_before": diag["ot/cost_before"]}
    return out


def _sampling(run_dir: str, size: dict, device: str) -> dict:
    """Images per second of the trained iSM model at 1 and 128 sampling steps (bf16 autocast on CUDA)."""
    from ism.evaluation.evaluate import generate
    from ism.training.run_state import load_run
    cfg, nets, data, _ = load_run(run_dir, device)
    net, n = nets["infer"], size["samples"]
    out = {}
    for steps in (1, 128):
        with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                            enabled=device.startswith("cuda")):
            if device.startswith("cuda"):
                generate(net, cfg, data, min(n, 16), steps, None)  # warm-up (kernels, autotuning)
                _sync(device)
            t0 = time.perf_counter()
            generate(net, cfg, data, n, steps, None)
            _sync(device)
        out[f"steps_{steps}"] = n / (time.perf_counter() - t0)
    return out


def measure(tiny: bool = False, model: str | None = None) -> dict:
    """All figures as one dict (see the module doc)."""
    size = dict(SIZES["tiny" if tiny else "full"])
    if model:
        size["model"] = model
    device = size["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device here; use --tiny for the CPU smoke run")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data_dir = _latents(tmp, size["k"] * size["batch"] + 512)
        sm = _train("sm", {}, size, data_dir, tmp, device)
        ism = _train("ism", FULL_ISM, size, data_dir, tmp, device)
        solves = _pool_solves(size, data_dir, device)
        sampling = _sampling(ism["run_dir"], size, device)
    window = size["k"] * sm["sec_per_step"]
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (tiny smoke run)",
        "cpu": machine.describe(),
        "torch": torch.__version__, "size": size, "sm": sm, "ism": ism,
        "ism_over_sm": ism["sec_per_step"] / sm["sec_per_step"],
        "pool_solve": {k: {**v, "share_of_k_sm_steps": v["s"] / (window + v["s"])} for k, v in solves.items()},
        "ism_ot_wait_share": ism["ot_wait_s"] / ism["sec_per_step"],
        "sampling_images_per_s": sampling, "total_s": time.perf_counter() - t_start,
    }


def markdown(res: dict) -> str:
    s, k, b = res["size"], res["size"]["k"], res["size"]["batch"]
    rows = [
        ("SM train step", f"{res['sm']['sec_per_step']:.4f} s",
         f"{s['model']}, batch {b}, peak {res['sm']['peak_mem_mb']:.0f} MB"),
        ("full iSM train step", f"{res['ism']['sec_per_step']:.4f} s",
         f"peak {res['ism']['peak_mem_mb']:.0f} MB; sOT K={k} prefetched"),
        ("full iSM / SM", f"{res['ism_over_sm']:.3f} x", "paper: ~1.04 for sOT alone"),
        ("sOT wait share (trainer, prefetched)", f"{res['ism_ot_wait_share']:.4f}", "ot/wait_s / sec_per_step"),
    ]
    for name, v in res["pool_solve"].items():
        rows.append((f"pool solve {k * b} pairs: {name}", f"{v['s']:.3f} s",
                     f"share of {k} SM steps {v['share_of_k_sm_steps']:.3f}; cost/pair {v['cost_before']:.1f} -> "
                     f"{v['cost_after']:.1f}"))
    for name, v in res["sampling_images_per_s"].items():
        rows.append((f"sampling {name.replace('_', ' ')}", f"{v:.1f} images/s", f"{s['samples']} samples, bf16"))
    head = [f"# bench_gpu: {res['device']}", "", f"CPU {res.get('cpu', 'not recorded')}; torch {res['torch']}, total {res['total_s']:.0f} s", "",
            "| case | value | note |", "|---|---|---|"]
    return "\n".join(head + [f"| {a} | {v} | {n} |" for a, v, n in rows]) + "\n"


def write(res: dict, out: Path, stem: str = "gpu") -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / f"{stem}.json", out / f"{stem}.md"
    j.write_text(json.dumps(res, indent=2))
    m.write_text(markdown(res))
    return j, m


def run() -> list[dict]:
    """`make bench`: the full GPU check where CUDA is available (also written to out/gpu.{json,md})."""
    if not torch.cuda.is_available():
        return [{"case": "GPU check", "value": "skipped", "unit": "", "note": "no CUDA device on this machine"}]
    res = measure()
    write(res, OUT)
    return [{"case": f"{r[0]}", "value": r[1], "unit": "", "note": r[2]}
            for r in (line.strip("|").split(" | ") for line in markdown(res).splitlines()[6:])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run at toy size (what the test runs)")
    ap.add_argument("--model", default=None, help="model variant (default dit-b/2; dit-xl/2 for the paper's)")
    ap.add_argument("--out", type=Path, default=OUT, help="output folder (default benchmarks/out)")
    args = ap.parse_args(argv)
    res = measure(args.tiny, args.model)
    paths = write(res, args.out, "gpu-tiny" if args.tiny else "gpu")
    print(markdown(res))
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
