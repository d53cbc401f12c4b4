"""Noise-data pairing: deterministic batches per step and scaling optimal transport (sOT, docs/method.md#scaling-optimal-transport).

sOT pools K consecutive batches with their noise, solves an assignment on the squared Euclidean cost between the K*B
noises and images (ot.solver: scipy's exact linear_sum_assignment, or the sparse solver that stays within ~0.1 % of
the optimum at a fraction of the time, see ism/training/objective/ot_solvers.py; auto picks exact up to 1,024 pairs),
permutes the noise only (labels stay with their images), and splits the pool back into the K batches in their
original data order. With ot.pool_scope=device the pool is split into ot.devices shards (rank r's rows of every
step) and each shard is solved alone, as each data-parallel rank would. With ot.coupling=class (the default for
conditional data) the assignment is solved within each label of the pool: one global assignment pairs class-c images
with noise drawn toward class c, while the sampler draws noise independently of the label, so training and sampling
disagree (measured: docs/results.md#sot-coupling-per-class). The price: a class holds ~K*B/classes pairs, so the
transport gain per class shrinks with many classes, while the noise marginal stays exact at any class count.

Everything derives from (seed, step), so a resumed run regenerates the pool it was in and serves the same batches as
an uninterrupted run.

Diagnostics on every batch: "ot/batch_cost" (mean ||x0 - x1||^2 of the batch as served, also without OT); with OT
the pool's "ot/cost_before" / "ot/cost_after", "ot/solve_s" = solver seconds of the pool charged to the batch that
first uses it (0 on the others; "ot/solved" marks that batch), so the trainer's window average of ot/solve_s is the
per-step solver cost, and "ot/wait_s" = seconds that step actually waited for its pool (the wall-time overhead).

With ot.prefetch the next pool is solved in a background thread while the current one trains (scipy's exact solver
and torch release the GIL): the pairs are the same, only the wait shrinks. The sparse solver's dense part (cost
blocks, in bf16 where the hardware has it natively, and top-k) runs on the model's device; its sparse LAP (OR-Tools)
holds the GIL, so that part is charged to the training thread even when prefetched (timings: docs/sot-at-scale.md).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import torch
import torch.nn.functional as F
from torch import Tensor

from ism.conf.config import Config, ConfigError
from ism.training.objective.ot_solvers import assign
from ism.training.rng import generator



def pairing_cost(x0: Tensor, x1: Tensor) -> float:
    """Mean squared Euclidean distance ||x0 - x1||^2 between noise and the sample it became."""
    return float((x0.double() - x1.double()).flatten(1).pow(2).sum(1).mean())

def _cost_view(x: Tensor, cost_resolution: int) -> Tensor:
    """Flattened float64 rows the cost is computed on, average-pooled to cost_resolution when asked."""
    if cost_resolution > 0:
        if x.dim() != 4:
            raise ConfigError(f"ot.cost_resolution: {cost_resolution} needs images [N, C, H, W], got shape "
                              f"{tuple(x.shape)}; use 0 for non-image data")
        if cost_resolution < max(x.shape[-2:]):
            x = F.adaptive_avg_pool2d(x, cost_resolution)
    return x.reshape(len(x), -1).double()


def ot_assign(x0: Tensor, x1: Tensor, cost_resolution: int = 0, labels: Tensor | None = None,
              solver: str = "exact", candidates: int = 32, groups: Tensor | None = None,
              device: torch.device | str | None = None) -> tuple[Tensor, dict[str, float]]:
    """OT pairing: perm with x0[perm][i] paired to x1[i] minimising sum_i ||x0[perm[i]] - x1[i]||^2.

    With labels, one assignment per label over that label's rows only (perm maps each row to a noise row of the same
    label group): the noise a class receives is a permutation of i.i.d. draws, so it stays exactly N(0, I) per class,
    as the sampler draws it. Without labels, one assignment over all rows (global). groups (e.g. the data-parallel
    shard of each row, ot.pool_scope=device) splits the rows further: one assignment per (group, label).
    solver: "exact" (the optimum), "sparse" or "auto" (ism.training.objective.ot_solvers); the sparse solver's dense part runs
    on `device` (default: where x0 is). The cost may be computed on images average-pooled to cost_resolution; the
    reported costs are always at full resolution.
    diag: ot/cost_before (identity pairing), ot/cost_after, ot/solve_s (cost matrices + solver).
    """
    if x0.shape != x1.shape:
        raise ValueError(f"ot_assign: x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    t0 = time.perf_counter()
    key = torch.zeros(len(x0), dtype=torch.long)
    if groups is not None:
        key = groups.long().cpu() * (int(labels.max()) + 1 if labels is not None and len(labels) else 1)
    if labels is not None:
        key = key + labels.long().cpu()
    a, b = _cost_view(x1, cost_resolution), _cost_view(x0, cost_resolution)
    if device is not None and solver != "exact":
        a, b = a.to(device), b.to(device)
    perm = torch.arange(len(x0))
    for c in key.unique():
        rows = (key == c).nonzero().squeeze(1)
        sub = rows if len(rows) < len(x0) else slice(None)  # one group: no copy
        perm[rows] = rows[assign(a[sub], b[sub], solver, candidates)]
    solve_s = time.perf_counter() - t0
    diag = {"ot/cost_before": pairing_cost(x0, x1), "ot/cost_after": pairing_cost(x0[perm], x1), "ot/solve_s": solve_s}
    return perm, diag


class PairSource:
    """Deterministic (x1, y, x0) batches per training step, OT-paired over pools of K batches when cfg.ot.enabled."""

    def __init__(self, data, cfg: Config, device: torch.device | str | None = None,
                 fixed: tuple[Tensor, Tensor, Tensor] | None = None):
        """device: where the sOT solver runs (the model's); fixed: (x0, x1, y) pairs to serve instead of (fresh noise,
        training data), e.g. reflow pairs."""
        self.x, self.y = (data.train_x, data.train_y) if fixed is None else (fixed[1], fixed[2])
        self.x0 = None if fixed is None else fixed[0]
        if fixed is not None and cfg.ot.enabled:
            raise ConfigError("data.coupling: fixed (reflow) pairs cannot be re-paired by sOT; set ot.enabled=false")
        self.n = len(self.x)
        if self.n == 0:
            raise ConfigError(f"data: the training set of '{data.name}' is empty")
        self.shape = tuple(self.x.shape[1:])
        self.seed = cfg.run.seed
        self.batch_size = cfg.optim.batch_size
        self.ot = cfg.ot.enabled
        self.pool_batches = cfg.ot.pool_batches if self.ot else 1
        self.cost_resolution = cfg.ot.cost_resolution
        # Class coupling needs labels the model is conditioned on; an unconditional run samples one N(0, I) for all.
        self.by_class = cfg.ot.coupling == "class" and cfg.data.conditional
        self.prefetch = self.ot and cfg.ot.prefetch
        self.solver, self.candidates, self.device = cfg.ot.solver, cfg.ot.candidates, device
        # ot.pool_scope=device: rank r of N holds rows r*B/N .. (r+1)*B/N - 1 of every step's batch (a contiguous
        # split of the global batch, as a distributed sampler hands it out) and solves only its own shard's pool.
        shards = cfg.ot.devices if cfg.ot.pool_scope == "device" else 1
        self.shard = (torch.arange(self.batch_size) // (self.batch_size // shards)).repeat(self.pool_batches) \
            if shards > 1 else None
        self.total_steps = cfg.run.steps
        self._ahead: tuple[int, Tensor, Future] | None = None  # (pool index, data idx, future of (noise, diag))
        self._perms: dict[int, Tensor] = {}
        self._pool: tuple[int, Tensor, Tensor, dict[str, float]] | None = None  # (pool index, data idx, noise, diag)
        self._next_step = 0

    # ------------------------------------------------------------------ deterministic draws
    def _epoch_perm(self, epoch: int) -> Tensor:
        """The data order of one epoch; only the two most recent epochs are kept."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = torch.randperm(self.n, generator=generator(self.seed, epoch, "data"))
        return self._perms[epoch]

    def data_indices(self, step: int) -> Tensor:
        """Training-set indices of step's batch: global positions step*B ... (step+1)*B-1 across epochs."""
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs = pos // self.n
        out = torch.empty_like(pos)
        for e in epochs.unique().tolist():
            m = epochs == e
            out[m] = self._epoch_perm(e)[pos[m] % self.n]
        return out

    def noise(self, step: int) -> Tensor:
        """Standard normal noise of step's batch (before any OT re-pairing)."""
        return torch.randn((self.batch_size, *self.shape), generator=generator(self.seed, step, "noise"))

    # ------------------------------------------------------------------ pools
    def _pool_draws(self, pool: int) -> tuple[Tensor, Tensor]:
        """Data indices and raw noise of a pool's K batches."""
        steps = range(pool * self.pool_batches, (pool + 1) * self.pool_batches)
        return torch.cat([self.data_indices(s) for s in steps]), torch.cat([self.noise(s) for s in steps])

    def _solve(self, x0: Tensor, idx: Tensor) -> tuple[Tensor, dict[str, float]]:
        perm, diag = ot_assign(x0, self.x[idx], self.cost_resolution, self.y[idx] if self.by_class else None,
                               self.solver, self.candidates, self.shard, self.device)
        return x0[perm], diag

    def _start_ahead(self, pool: int) -> None:
        """Solve `pool` in a daemon thread (a daemon, so a finished or interrupted run never waits for it)."""
        if not self.prefetch or pool * self.pool_batches >= self.total_steps:
            return
        idx, x0 = self._pool_draws(pool)  # drawn here: the epoch-order cache is not thread-safe
        fut: Future = Future()

        def work() -> None:
            try:
                fut.set_result(self._solve(x0, idx))
            except BaseException as e:  # re-raised in the training thread by fut.result()
                fut.set_exception(e)

        threading.Thread(target=work, name=f"sot-pool-{pool}", daemon=True).start()
        self._ahead = (pool, idx, fut)

    def _get_pool(self, pool: int) -> tuple[Tensor, Tensor, dict[str, float], bool]:
        """Data indices, OT-permuted noise and diag of a pool (cached: only the current pool is held)."""
        if self._pool is not None and self._pool[0] == pool:
            return self._pool[1], self._pool[2], self._pool[3], False
        t0 = time.perf_counter()
        if self._ahead is not None and self._ahead[0] == pool:
            idx, (x0, diag) = self._ahead[1], self._ahead[2].result()
        else:
            idx, x0 = self._pool_draws(pool)
            x0, diag = self._solve(x0, idx)
        self._ahead = None
        diag = {**diag, "ot/wait_s": time.perf_counter() - t0}
        self._pool = (pool, idx, x0, diag)
        self._start_ahead(pool + 1)
        return idx, x0, diag, True

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
        """(x1, y, x0, diag) of a training step, CPU tensors of batch_size rows; labels are returned as stored."""
        if step < 0:
            raise ValueError(f"PairSource.batch: step must be >= 0, got {step}")
        diag: dict[str, float] = {}
        if self.ot:
            pool, k = divmod(step, self.pool_batches)
            idx, x0, pool_diag, solved = self._get_pool(pool)
            rows = slice(k * self.batch_size, (k + 1) * self.batch_size)
            idx, x0 = idx[rows], x0[rows]
            diag.update(pool_diag)
            if not solved:  # the pool's seconds are charged to the step that first used it
                diag["ot/solve_s"] = diag["ot/wait_s"] = 0.0
            diag["ot/solved"] = float(solved)
        else:
            idx = self.data_indices(step)
            x0 = self.noise(step) if self.x0 is None else self.x0[idx]
        x1, y = self.x[idx], self.y[idx]
        diag["ot/batch_cost"] = pairing_cost(x0, x1)
        self._next_step = step + 1
        return x1, y, x0, diag

    # ------------------------------------------------------------------ resume
    def _expected_state(self, next_step: int) -> dict[str, int]:
        return {"pool_index": next_step // self.pool_batches if self.ot else -1,
                "position": next_step * self.batch_size}

    def state_dict(self, next_step: int | None = None) -> dict[str, int]:
        """Where the next batch (next_step, default: the one after the last served) starts: pool index (-1 without
        OT) and global data position."""
        return self._expected_state(self._next_step if next_step is None else next_step)

    def load_state_dict(self, state: dict, step: int | None = None) -> None:
        """Adopt a saved position; when `step` (the next step to run) is given, a mismatch is an error."""
        if set(state) != {"pool_index", "position"}:
            raise ValueError(f"PairSource.load_state_dict: expected keys pool_index, position; got {sorted(state)}")
        pos = int(state["position"])
        if pos % self.batch_size:
            raise ValueError(f"PairSource.load_state_dict: position {pos} is not a multiple of batch size "
                             f"{self.batch_size} (optim.batch_size changed since the checkpoint?)")
        next_step = pos // self.batch_size if step is None else step
        want = self._expected_state(next_step)
        if {k: int(v) for k, v in state.items()} != want:
            raise ValueError(f"PairSource.load_state_dict: saved state {dict(state)} does not match step {next_step} "
                             f"(expected {want}); the checkpoint and the data/OT settings disagree")
        self._next_step = next_step
