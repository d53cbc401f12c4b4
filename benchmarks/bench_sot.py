"""sOT cost: exact-assignment wall time per pool size, and the solver's share of training time at K=32; then the
solvers side by side (solver_table) and the straightness of models trained with each (straightness_rows).

Pools pair N standard-normal noises with N real MNIST digits at 1x16x16 (mnist5k, tiled when N exceeds the set;
random vectors if mnist5k is unavailable), timed through ot_assign (cost matrix + scipy linear_sum_assignment).
The training share is measured inside the real trainer (mnist-cpu preset, its batch of 32, 1 torch thread) twice:
solved inline (ot.prefetch=false: the solver's CPU share) and prefetched in a background thread (the default: the
wall-time share left on the training thread); sot_share() derives the inline share from the standalone solve.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ism.training.objective.coupling import ot_assign
from ism.training.objective.ot_solvers import exact_assign, sparse_assign

POOLS = (256, 512, 1024, 2048, 4096, 8192)
K, BATCH = 32, 32  # the paper's pool: 32 batches; 32 is the mnist-cpu batch
_SOLVE_CACHE: dict[int, float] = {}


def _images(n: int) -> tuple[torch.Tensor, str]:
    """n MNIST digits at 1x16x16 in [-1, 1] (tiled), or random vectors when mnist5k cannot be loaded."""
    try:
        from ism.conf.config import DataConfig
        from ism.training.data import load_dataset
        x = load_dataset(DataConfig(name="mnist5k", resolution=16)).train_x
        reps = -(-n // len(x))
        return x.repeat(reps, 1, 1, 1)[:n].contiguous(), f"mnist5k digits (tiled from {len(x)})"
    except Exception as e:  # noqa: BLE001 - a benchmark should still report something
        return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1)), f"random vectors ({e})"


def solve_seconds(n: int, repeats: int = 1) -> tuple[float, float, dict, str]:
    """Median wall and CPU seconds of ot_assign on an n-pair pool, its last diag, and the data source.

    CPU time is reported too because this machine's 2 cores are shared: wall time includes waiting.
    """
    x1, src = _images(n)
    wall, cpu, diag = [], [], {}
    for r in range(repeats):
        x0 = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(r))
        t0, c0 = time.perf_counter(), time.process_time()
        _, diag = ot_assign(x0, x1)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    _SOLVE_CACHE[n] = statistics.median(wall)
    return _SOLVE_CACHE[n], statistics.median(cpu), diag, src


def sot_share(step_seconds: float, pool_solve_seconds: float | None = None, k: int = K) -> float:
    """Share of training time spent in the assignment: one pool solve every k steps of step_seconds each.

    step_seconds is the train step time without OT; pool_solve_seconds defaults to the measured (or, if not yet
    measured, freshly timed) k*64-pair pool.
    """
    if pool_solve_seconds is None:
        pool_solve_seconds = _SOLVE_CACHE.get(k * BATCH) or solve_seconds(k * BATCH)[0]
    per_step = pool_solve_seconds / k
    return per_step / (step_seconds + per_step)


def train_window(prefetch: bool) -> dict:
    """The real trainer's stats for steps K..2K-1 of a 3K-step sOT run (mnist-cpu, K=32).

    That window skips warm-up, trains on one pool and (with prefetch) overlaps the next pool's solve; its
    sec_per_step and the trainer's per-step averages of ot/solve_s and ot/wait_s come from the same seconds, so
    their ratios are robust to load from other processes.
    """
    from ism.conf.config import resolve
    from ism.training.train import train
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve("mnist-cpu", overrides={
            "run.steps": 3 * K, "run.log_every": K, "run.checkpoint_every": 10 * K, "run.progress": False,
            "run.out_dir": tmp, "eval.at_end": False, "ot.enabled": True, "ot.pool_batches": K,
            "ot.prefetch": prefetch, "optim.batch_size": BATCH, "run.threads": 1})
        train(cfg, run_dir=Path(tmp) / "run")
        lines = [json.loads(ln) for ln in (Path(tmp) / "run" / "stats.jsonl").read_text().splitlines() if ln.strip()]
    return lines[1]


def run() -> list[dict]:
    torch.set_num_threads(1)  # the CPU presets train on one thread; scipy's LAP is single-threaded anyway
    rows = []
    for n in POOLS:
        reps = 3 if n <= 1024 else 1
        sec, cpu, diag, src = solve_seconds(n, reps)
        rows.append({"case": f"ot_assign N={n} (1x16x16)", "value": sec, "unit": "s",
                     "note": f"exact LAP, {'median of 3' if reps > 1 else 'single run'}, CPU {cpu:.2f} s, load "
                             f"{os.getloadavg()[0]:.1f}; cost/pair {diag['ot/cost_before']:.0f} -> "
                             f"{diag['ot/cost_after']:.0f}; data: {src}"})
    pool = K * BATCH
    rows.append({"case": f"pool solve per step at K={K}, B={BATCH}", "value": _SOLVE_CACHE[pool] / K, "unit": "s/step",
                 "note": f"one {pool}-pair solve every {K} steps (standalone timing)"})
    try:
        inline, ahead = train_window(prefetch=False), train_window(prefetch=True)
    except Exception as e:  # noqa: BLE001 - report the solver figures even if the trainer is unavailable
        for s in (0.05, 0.1, 0.25, 0.5, 1.0):
            rows.append({"case": f"sOT share at {s} s/step (K={K}, B={BATCH})", "value": sot_share(s),
                         "unit": "fraction", "note": f"trainer not measurable here ({type(e).__name__}: {e})"})
        return rows + solver_table() + precision_rows() + pool_scope_rows() + straightness_rows()
    step, solve = float(inline["sec_per_step"]), float(inline["ot/solve_s"])
    step_p, wait_p = float(ahead["sec_per_step"]), float(ahead["ot/wait_s"])
    load = f"load {os.getloadavg()[0]:.1f}"
    rows += [
        {"case": f"train step, mnist-cpu, sOT K={K}, B={BATCH}, solved inline", "value": step, "unit": "s/step",
         "note": f"real trainer, 1 thread, steps {K}..{2 * K - 1} (one pool solve), {load}"},
        {"case": "of which pool solve (trainer's ot/solve_s)", "value": solve, "unit": "s/step", "note": "same window"},
        {"case": f"sOT CPU share of train time (K={K}, B={BATCH}), inline", "value": solve / step,
         "unit": "fraction", "note": "ot/solve_s / sec_per_step of the same window; the paper reports ~0.04 (GPU)"},
        {"case": f"sOT share (K={K}, B={BATCH}) from the standalone solve", "value": sot_share(step - solve),
         "unit": "fraction", "note": f"sot_share({step - solve:.3f} s/step without the solve)"},
        {"case": f"train step, sOT K={K}, B={BATCH}, prefetched (default)", "value": step_p, "unit": "s/step",
         "note": f"the next pool solved in a background thread during this window, {load}"},
        {"case": f"sOT wall share of train time (K={K}, B={BATCH}), prefetched", "value": wait_p / step_p,
         "unit": "fraction", "goal": "<= 0.05",
         "note": "ot/wait_s / sec_per_step: the training thread's wait; the solve itself runs on a spare core"},
    ]
    return rows + solver_table() + precision_rows() + pool_scope_rows() + straightness_rows()


# ------------------------------------------------------------------ solvers side by side (issue 15)
SOLVER_POOLS = (1024, 2048, 4096, 8192, 16384, 32768)
EXACT_MAX, POT_EMD_MAX, POT_SINKHORN_MAX = 8192, 4096, 2048  # beyond these a single solve takes minutes here
LATENTS_CPU_MAX = 32768  # 4x32x32 latents: the sparse solver's bf16 matmul makes 32,768 pairs ~11 s on 2 threads


def _pool(kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(data rows, noise rows) of an n-pair pool: MNIST digits 1x16x16 (tiled) or random 4x32x32 'latents'."""
    x1 = _images(n)[0] if kind == "mnist" else torch.randn(n, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(2))
    return x1.reshape(n, -1), x0.reshape(n, -1)


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _pot_sinkhorn_perm(a: torch.Tensor, b: torch.Tensor, k: int = 32) -> torch.Tensor:
    """POT's log-domain Sinkhorn plan (reg 1 % of the largest cost), rounded to a permutation by the exact sparse LAP
    on each row's and column's k largest plan entries (the same rounding as ours, on POT's candidates)."""
    import numpy as np
    import ot
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching
    n = len(a)
    m = torch.cdist(a.double(), b.double()).square_().numpy()
    w = np.full(n, 1.0 / n)
    plan = torch.as_tensor(ot.sinkhorn(w, w, m / m.max(), 1e-2, method="sinkhorn_log", numItermax=1000))
    rows = torch.cat([torch.arange(n).repeat_interleave(k), plan.topk(k, 0).indices.T.reshape(-1), torch.arange(n)])
    cols = torch.cat([plan.topk(k, 1).indices.reshape(-1), torch.arange(n).repeat_interleave(k), torch.arange(n)])
    key = torch.unique(rows * n + cols)
    r, c = (key // n).numpy(), (key % n).numpy()
    g = csr_matrix((m[r, c] - m.min() + m.max(), (r, c)), shape=(n, n))
    return torch.as_tensor(min_weight_full_bipartite_matching(g)[1])


def solver_table(kinds=("mnist", "latents"), pools=SOLVER_POOLS) -> list[dict]:
    """Seconds (wall and CPU, 2 threads) and pairing cost of each solver on the same pools, gap to the exact optimum
    where scipy's exact solve runs (<= EXACT_MAX pairs), ratios of ours to scipy and to POT. One run per cell: the
    big sizes take minutes and the machine is shared, so nothing is repeated."""
    import ot
    torch.set_num_threads(2)
    rows = []
    for kind in kinds:
        for n in pools:
            if kind == "latents" and n > LATENTS_CPU_MAX:
                rows.append({"case": f"{kind} N={n}: sparse (ours)", "value": "not run", "unit": "",
                             "note": f"not run: the dense {n}^2 x 4,096 cost is minutes of CPU "
                                     "(bench_gpu.py times 8,192 on a GPU)"})
                continue
            a, b = _pool(kind, n)
            cost = lambda p: (a.double() - b[p].double()).square().sum(1).mean().item()  # noqa: E731
            ident = cost(torch.arange(n))
            res: dict[str, tuple[float, float, float]] = {}
            runs = [_timed(lambda: sparse_assign(a, b)) for _ in range(3 if n <= 8192 else 1)]
            perm, wall, cpu = sorted(runs, key=lambda r: r[1])[len(runs) // 2]  # the median run by wall time
            res["sparse (ours)"] = (wall, cpu, cost(perm))
            if n <= EXACT_MAX:
                perm, wall, cpu = _timed(lambda: exact_assign(a, b))
                res["scipy exact"] = (wall, cpu, cost(perm))
            if n <= POT_EMD_MAX:
                w = torch.full((n,), 1.0 / n, dtype=torch.float64).numpy()
                plan, wall, cpu = _timed(lambda: ot.emd(w, w, torch.cdist(a.double(), b.double()).square_().numpy(),
                                                        numItermax=10 ** 9))
                res["POT emd"] = (wall, cpu, cost(torch.as_tensor(plan.argmax(1))))
            if n <= POT_SINKHORN_MAX:
                perm, wall, cpu = _timed(lambda: _pot_sinkhorn_perm(a, b))
                res["POT sinkhorn+round"] = (wall, cpu, cost(perm))
            exact = res.get("scipy exact", (0, 0, None))[2]
            ours = res["sparse (ours)"]
            for name, (wall, cpu, c) in res.items():
                gap = f"gap to exact {100 * (c - exact) / exact:.3f} % ({100 * (c - exact) / (ident - exact):.2f} % " \
                      f"of the OT gain)" if exact else "exact not run at this size"
                ratio = f"; median of {len(runs)} runs" if name == "sparse (ours)" else \
                    f"; ours is {wall / ours[0]:.1f}x faster (wall)"
                rows.append({"case": f"{kind} N={n}: {name}", "value": wall, "unit": "s",
                             "goal": ("<= 1" if n == 8192 else "<= 15" if n == 32768 else "")
                             if name == "sparse (ours)" else "",
                             "note": f"CPU {cpu:.2f} s, cost/pair {c:.2f} (identity {ident:.2f}), {gap}{ratio}; "
                                     f"load {os.getloadavg()[0]:.1f}"})
            print(rows[-len(res):], flush=True)
    return rows


def pool_scope_rows(pool: int = 8192, devices=(1, 2, 4, 8, 32)) -> list[dict]:
    """ot.pool_scope=device at the paper's pool (K=32 x global batch 256 = 8,192 MNIST digits): per-rank pools of
    8,192/N pairs, with the class and the global coupling (auto solver), solve CPU seconds and cost/pair after OT."""
    from ism.conf.config import DataConfig
    from ism.training.data import load_dataset
    torch.set_num_threads(2)
    d = load_dataset(DataConfig(name="mnist5k", resolution=16))
    reps = -(-pool // len(d.train_x))
    x1, y = d.train_x.repeat(reps, 1, 1, 1)[:pool], d.train_y.repeat(reps)[:pool]
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(2))
    batch = pool // K
    rows = []
    for coupling in ("class", "global"):
        for n in devices:
            shard = (torch.arange(batch) // (batch // n)).repeat(K) if n > 1 else None
            (_, diag), wall, cpu = _timed(lambda: ot_assign(x0, x1, labels=y if coupling == "class" else None,
                                                            solver="auto", groups=shard))
            rows.append({"case": f"pool_scope={'device' if n > 1 else 'global'}, {n} rank(s), coupling={coupling}",
                         "value": diag["ot/cost_after"], "unit": "cost/pair",
                         "note": f"{pool // n} pairs per rank (~{pool // n // (10 if coupling == 'class' else 1)} "
                                 f"per assignment); identity {diag['ot/cost_before']:.2f}; solve CPU {cpu:.2f} s, "
                                 f"wall {wall:.2f} s (all ranks' pools, serially), load {os.getloadavg()[0]:.1f}"})
            print(rows[-1], flush=True)
    return rows


def straightness_rows(preset: str = "mnist-cpu", overrides: dict | None = None) -> list[dict]:
    """Straightness (path length / chord at 128 steps) and FID of a model trained with the exact vs the sparse solver,
    one seed each: the embedded preset, sOT on, one global 1,024-pair pool per 32 steps (global: where the solvers'
    pairings differ most; per-class pools of ~100 pairs are within the sparse solver's exact range)."""
    from ism.commands.env import eval_cache_root
    from ism.conf.config import resolve
    from ism.evaluation.evaluate import make_evaluator
    from ism.training.train import train
    rows = []
    for solver in ("exact", "sparse"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = resolve(preset, overrides={"run.out_dir": tmp, "run.progress": False, "ot.enabled": True,
                                             "ot.coupling": "global", "ot.solver": solver, "eval.steps": (1, 4, 128),
                                             **(overrides or {})})
            t0 = time.perf_counter()
            m = train(cfg, run_dir=Path(tmp) / "run", evaluator=make_evaluator(cfg, eval_cache_root()))["metrics"]
            lines = [json.loads(ln) for ln in (Path(tmp) / "run" / "stats.jsonl").read_text().splitlines() if ln]
        cost = statistics.mean(float(ln["ot/cost_after"]) for ln in lines if "ot/cost_after" in ln)
        what = f"{preset}{' ' + str(overrides) if overrides else ''}"
        rows.append({"case": f"{what} sOT (global pool), solver={solver}: straightness@128", "unit": "path/chord",
                     "value": m["straightness_steps_128"],
                     "note": f"one seed; FID@1/4/128 {m['fid_steps_1']:.1f}/{m['fid_steps_4']:.1f}/"
                             f"{m['fid_steps_128']:.1f}; mean pool cost/pair after OT {cost:.2f}; "
                             f"{cfg.run.steps} steps of batch {cfg.optim.batch_size}, pool "
                             f"{cfg.optim.batch_size * cfg.ot.pool_batches} pairs, + eval ({cfg.eval.num_samples} "
                             f"samples) in {time.perf_counter() - t0:.0f} s"})
        print(rows[-1], flush=True)
    return rows


def precision_rows(pools=(4096, 8192), repeats: int = 5) -> list[dict]:
    """The sparse solver's candidate search in bf16 against float32 on this CPU (2 threads, MNIST pools), and which
    one matmul_dtype chooses here: the fastest wall of `repeats` runs (the machine is shared: the minimum is the
    least disturbed run), the median CPU seconds, and the cost gap between the two."""
    from ism.system import machine
    from ism.training.objective.ot_solvers import matmul_dtype
    torch.set_num_threads(2)
    rows = []
    for n in pools:
        a, b = _pool("mnist", n)
        res = {}
        for dt in (torch.bfloat16, torch.float32):
            runs = [_timed(lambda: sparse_assign(a, b, dtype=dt)) for _ in range(repeats)]
            perm = runs[0][0]
            res[dt] = (min(r[1] for r in runs), statistics.median(r[2] for r in runs),
                       (a.double() - b[perm].double()).square().sum(1).mean().item())
        chosen = matmul_dtype(n)
        for dt, (wall, cpu, c) in res.items():
            rows.append({"case": f"mnist N={n}: sparse, candidate search in {str(dt).split('.')[1]}", "value": wall,
                         "unit": "s", "goal": "<= 1" if n == 8192 and dt == chosen else "",
                         "note": f"fastest of {repeats}, median CPU {cpu:.2f} s, cost/pair {c:.2f}; "
                                 f"{'chosen here' if dt == chosen else 'not chosen here'} ({machine.describe()}); "
                                 f"load {os.getloadavg()[0]:.1f}"})
        print(rows[-2:], flush=True)
    return rows


PARTS = {"solvers": solver_table, "scope": pool_scope_rows, "straightness": straightness_rows,
         "precision": precision_rows}

if __name__ == "__main__":  # python -m benchmarks.bench_sot [solvers|scope|straightness|precision ...]: parts of run()
    import sys
    from benchmarks.support import with_cpu
    for part in sys.argv[1:] or ["all"]:
        for r in with_cpu(run() if part == "all" else PARTS[part]()):
            print(r)
