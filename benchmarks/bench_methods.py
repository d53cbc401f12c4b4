"""CPU ms per training step of each few-step method on the embedded model (unet-tiny, batch 32, one thread).

A step is the training loop's work: the method's rows and targets (ism.training.objective.methods.build_rows, with its
no-grad target passes or MeanFlow's JVP), forward + backward on the rows, AdamW. CPU time (process_time), the
minimum over repeats; the ratio to SM is the cost the methods report's step-time table measures on real runs.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ism.conf.config import resolve
from ism.training.models import build_model
from ism.training.objective.ema import build_emas
from ism.training.objective.methods import build_rows
from ism.training.rng import generator

CASES = (  # (label, overrides): the variants of ablations/methods.yaml's methods group
    ("sm", {}),
    ("ism", {"guidance.mode": "intrinsic", "ema.twin": True}),
    ("meanflow", {"method.name": "meanflow", "shortcut.target": "online"}),
    ("meanflow+intrinsic", {"method.name": "meanflow", "shortcut.target": "online", "guidance.mode": "intrinsic"}),
    ("ct", {"method.name": "ct", "guidance.mode": "none", "shortcut.target": "online"}),
)
SHAPE, CLASSES, BATCH = (1, 16, 16), 10, 32


@dataclass(frozen=True)
class _Data:
    kind: str = "image"
    shape: tuple = SHAPE
    num_classes: int = CLASSES
    name: str = "bench"


def step_times(overrides: dict, repeats: int = 12, warmup: int = 3) -> list[tuple[float, float]]:
    """(CPU seconds, wall seconds) per training step of one method."""
    cfg = resolve("mnist-cpu", overrides=overrides)
    torch.manual_seed(0)
    model = build_model(cfg, _Data())
    emas = build_emas(model, cfg)
    nets = {"online": model, "target": emas["target"].module, "infer": emas["infer"].module}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + repeats):
        x1, x0 = torch.randn(BATCH, *SHAPE, generator=g), torch.randn(BATCH, *SHAPE, generator=g)
        y = torch.randint(0, CLASSES, (BATCH,), generator=g)
        c0, t0 = time.process_time(), time.perf_counter()
        rows, _ = build_rows(x1, y, x0, nets, cfg, generator(0, i, "rows"), CLASSES, i)
        loss = (model(rows.xt, rows.t, rows.k, rows.y, rows.w) - rows.target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for e in {id(e): e for e in emas.values()}.values():
            e.update(model)
        if i >= warmup:
            times.append((time.process_time() - c0, time.perf_counter() - t0))
    return times


def run() -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows, base = [], None
    try:
        for label, over in CASES:
            ts = step_times(over)
            cpu = [c for c, _ in ts]
            best = 1000 * min(cpu)
            base = base or best
            rows.append({"case": f"{label} train step (unet-tiny, batch {BATCH}, 1 thread)", "value": best,
                         "unit": "ms cpu", "note": f"median {1000 * statistics.median(cpu):.1f} ms cpu, "
                         f"{best / base:.2f}x sm; rows + targets, fwd + bwd, AdamW, EMA"})
    finally:
        torch.set_num_threads(threads)
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
