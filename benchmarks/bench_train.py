"""Train step time of the embedded preset: SM baseline, each iSM component alone, full iSM (ratios to baseline).

Every variant runs through the real trainer (ism.train.train) on 1 torch thread, in one process, interleaved over
rounds so that machine load hits all variants alike; the figure is the best round's mean sec/step after warmup.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ism.config import resolve
from ism.train import train

BASE = ["guidance.mode=cfg_finest", "wavelet.enabled=false", "ot.enabled=false", "ema.twin=false"]
VARIANTS = {
    "sm-baseline": [],
    "intrinsic-guidance": ["guidance.mode=intrinsic"],
    "wavelet": ["wavelet.enabled=true"],
    "sot-k32": ["ot.enabled=true", "ot.pool_batches=32"],
    "twin-ema": ["ema.twin=true"],
    "full-ism": ["guidance.mode=intrinsic", "wavelet.enabled=true", "ot.enabled=true", "ot.pool_batches=32",
                 "ema.twin=true"],
}
STEPS, WARMUP, ROUNDS = 64, 8, 2  # 64 steps = two sOT pools of 32 batches: the solve cost is amortised as in training


def step_seconds(over: list[str], root: Path, rnd: int) -> float:
    """Mean sec/step of one short run after warmup, read from its stats.jsonl."""
    cfg = resolve("mnist-cpu", [], [*BASE, *over, f"run.steps={STEPS}", "run.log_every=1", f"run.checkpoint_every={STEPS}",
                                    "run.progress=false", "eval.at_end=false", "run.threads=1", f"run.seed={rnd}"])
    run_dir = root / f"{abs(hash(tuple(over)))}-{rnd}"
    train(cfg, run_dir)
    lines = [json.loads(ln) for ln in (run_dir / "stats.jsonl").read_text().splitlines()]
    secs = [ln["sec_per_step"] for ln in lines[WARMUP:]]
    return sum(secs) / len(secs)


def run() -> list[dict]:
    torch.set_num_threads(1)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(ROUNDS):
            for name, over in VARIANTS.items():
                s = step_seconds(over, Path(tmp), rnd)
                best[name] = min(best.get(name, s), s)
    base = best["sm-baseline"]
    rows = []
    for name, s in best.items():
        rows.append({"case": f"{name} sec/step", "value": s, "unit": "s", "note": "mnist-cpu preset, 1 thread"})
        rows.append({"case": f"{name} steps/s", "value": 1 / s, "unit": "1/s", "note": ""})
        rows.append({"case": f"{name} / baseline", "value": s / base, "unit": "x",
                     "goal": "<= 1.25" if name == "full-ism" else "", "note": "step-time ratio"})
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
