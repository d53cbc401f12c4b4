"""Train step time of the embedded preset: SM baseline, each iSM component alone, full iSM (ratios to baseline).

Every variant runs through the real trainer (ism.training.train.train) on 1 torch thread, in one process. This VM's speed drifts
by up to 30 % over minutes, so each variant is timed in PAIRS with the baseline, back to back and in alternating
order; the ratio is the median over pairs of (variant / baseline), and sec/step the median of the variant's runs.
"""
from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch

from ism.conf.config import resolve
from ism.training.train import train

BASE = ["guidance.mode=cfg_finest", "wavelet.enabled=false", "ot.enabled=false", "ema.twin=false"]
VARIANTS = {
    "sm-baseline": [],
    "intrinsic-guidance": ["guidance.mode=intrinsic"],
    "wavelet": ["wavelet.enabled=true"],
    "sot-k32": ["ot.enabled=true", "ot.pool_batches=32"],
    "twin-ema": ["ema.twin=true"],
    "full-ism": ["guidance.mode=intrinsic", "wavelet.enabled=true", "ot.enabled=true", "ot.pool_batches=32",
                 "ema.twin=true"],
    # The solve done inline on the training thread (ot.prefetch=false): what full iSM costs with no spare core.
    "full-ism-inline-sot": ["guidance.mode=intrinsic", "wavelet.enabled=true", "ot.enabled=true",
                            "ot.pool_batches=32", "ema.twin=true", "ot.prefetch=false"],
}
# Five sOT pools of 32 batches; the timed window is pools 2-5 (steps 32..159): it holds one pool solve per 32 steps,
# inline at a pool's first step, or (ot.prefetch, the default) the next pool's solve in a background thread, so the
# solve cost is amortised at its training rate either way and warm-up stays outside the window.
STEPS, WINDOW, PAIRS = 160, slice(32, 160), 3


def step_seconds(over: list[str], root: Path, rnd: int) -> float:
    """Mean sec/step of one short run after warmup, read from its stats.jsonl."""
    cfg = resolve("mnist-cpu", [], [*BASE, *over, f"run.steps={STEPS}", "run.log_every=1", f"run.checkpoint_every={STEPS}",
                                    "run.progress=false", "eval.at_end=false", "run.threads=1", f"run.seed={rnd}"])
    run_dir = root / f"{abs(hash(tuple(over)))}-{rnd}"
    train(cfg, run_dir)
    lines = [json.loads(ln) for ln in (run_dir / "stats.jsonl").read_text().splitlines()]
    secs = [ln["sec_per_step"] for ln in lines[WINDOW]]
    return sum(secs) / len(secs)


def run() -> list[dict]:
    torch.set_num_threads(1)
    secs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    ratios: dict[str, list[float]] = {name: [] for name in VARIANTS if name != "sm-baseline"}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(PAIRS):
            for name in ratios:
                order = ("sm-baseline", name) if pair % 2 == 0 else (name, "sm-baseline")
                got = {n: step_seconds(VARIANTS[n], Path(tmp), pair) for n in order}
                secs["sm-baseline"].append(got["sm-baseline"])
                secs[name].append(got[name])
                ratios[name].append(got[name] / got["sm-baseline"])
    rows = []
    for name, s in secs.items():
        med = statistics.median(s)
        rows.append({"case": f"{name} sec/step", "value": med, "unit": "s",
                     "note": f"mnist-cpu preset, 1 thread; median of {len(s)} runs ({min(s):.4f}-{max(s):.4f})"})
        rows.append({"case": f"{name} steps/s", "value": 1 / med, "unit": "1/s", "note": ""})
        if name in ratios:
            r = ratios[name]
            rows.append({"case": f"{name} / baseline", "value": statistics.median(r), "unit": "x",
                         "goal": "<= 1.25" if name == "full-ism" else "",
                         "note": f"median of {len(r)} back-to-back pairs ({min(r):.3f}-{max(r):.3f})"})
    return rows


if __name__ == "__main__":
    from benchmarks.support import with_cpu
    for r in with_cpu(run()):
        print(r)
