"""ms per training step and parameter counts of the CPU-sized models, on one thread.

A step is what the shortcut trainer does per batch: forward + backward on the batch, two no-grad forwards on a
quarter batch (the self-consistency targets) and an AdamW update. The value is CPU time (process_time, one thread),
the minimum over repeats: on a shared machine wall time mostly measures the neighbours (it is given in the note).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ism.conf.config import resolve
from ism.training.models import build_model, count_params

CASES = (  # (model, data shape, batch): the batch of the preset that uses the model
    ("unet-smoke", (1, 16, 16), 16),
    ("unet-tiny", (1, 16, 16), 32),       # the recommended mnist-cpu batch (docs/embedded-model.md)
    ("unet-tiny", (1, 16, 16), 64),
    ("unet-small", (1, 16, 16), 64),
    ("dit-tiny/4", (1, 16, 16), 64),
    ("mlp2d", (2,), 256),
)


@dataclass(frozen=True)
class _Data:
    kind: str
    shape: tuple
    num_classes: int = 10
    name: str = "bench"


def _inputs(shape, b, g):
    return (torch.randn(b, *shape, generator=g), torch.rand(b, generator=g), torch.randint(0, 8, (b,), generator=g),
            torch.randint(0, 11, (b,), generator=g), torch.rand(b, generator=g))


def step_times(model, shape, batch: int, repeats: int = 15, warmup: int = 3) -> list[tuple[float, float]]:
    """(CPU seconds, wall seconds) per simulated shortcut training step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    quarter = max(1, batch // 4)
    times = []
    for i in range(warmup + repeats):
        x, t, k, y, w = _inputs(shape, batch, g)
        xq, tq, kq, yq, wq = _inputs(shape, quarter, g)
        c0, t0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            half = model(xq, tq, kq, yq, wq)
            model(xq + 0.5 * half, tq, kq, yq, wq)
        loss = (model(x, t, k, y, w) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append((time.process_time() - c0, time.perf_counter() - t0))
    return times


def forward_ms_per_1k(model, shape, batch: int = 250, repeats: int = 5) -> float:
    """CPU milliseconds for 1000 no-grad sample forwards (one sampling step of an eval batch of 1000)."""
    g = torch.Generator().manual_seed(1)
    x, t, k, y, w = _inputs(shape, batch, g)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.process_time()
            model(x, t, k, y, w)
            best = min(best, time.process_time() - t0)
    return 1000 * best * 1000 / batch


def run() -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for name, shape, batch in CASES:
            torch.manual_seed(0)
            cfg = resolve("mnist-cpu", overrides={"model.name": name})
            model = build_model(cfg, _Data("points" if len(shape) == 1 else "image", shape))
            ts = step_times(model, shape, batch)
            cpu, wall = [c for c, _ in ts], [w for _, w in ts]
            rows.append({"case": f"{name} train step (batch {batch}, 1 thread)", "value": 1000 * min(cpu), "unit": "ms cpu",
                         "note": f"median {1000 * statistics.median(cpu):.1f} ms cpu, min wall {1000 * min(wall):.1f} ms; "
                                 "fwd+bwd + 2 no-grad fwd at batch/4 + AdamW"})
            if all(r["case"] != f"{name} params" for r in rows):
                rows.append({"case": f"{name} params", "value": count_params(model), "unit": "params",
                             "note": f"data shape {shape}"})
                rows.append({"case": f"{name} sampling forward x1000", "value": forward_ms_per_1k(model, shape),
                             "unit": "ms cpu", "note": "no-grad, batch 250; one Euler step for 1000 samples"})
    finally:
        torch.set_num_threads(threads)
    return rows


if __name__ == "__main__":
    from benchmarks.support import with_cpu
    for r in with_cpu(run()):
        print(r)
