"""Assignment solvers for sOT: the exact optimum (scipy) and a fast sparse one that still returns a permutation.

exact: scipy's linear_sum_assignment on the dense float64 squared-Euclidean cost, O(N^3): close to a minute on 2 CPU
cores at the paper's pool of 8,192 pairs (benchmarks/results.md) -- a stall.

sparse: the same assignment problem restricted to a candidate graph, solved *exactly on that graph* by OR-Tools'
cost-scaling assignment (Goldberg-Kennedy push-relabel, `SimpleLinearSumAssignment`; its min-cost flow when the pool
repeats data rows). The candidates are cheap
*reduced* costs c_ij - u_i - v_j: every row keeps its k cheapest, and every column that fewer than k/4 rows chose
(ORPHAN_SHARE) keeps its own k cheapest. The duals come from one pass: v from the Hungarian reduction of a random
sample of 1,024 rows (column minima after row minima), then u_i = min_j c_ij - v_j exactly, from the row pass
itself. The identity pairs are added, so a perfect matching always exists. The dense part (one matmul of the pool,
top-k per row block of at most 32 MiB) runs in torch on the model's device under no_grad; only the ~(k+1)N candidate
edges go to the CPU.

Why these parts (each measured against its alternative; the figures, with the CPU of each, are in
benchmarks/results.md, "sOT solvers: why each part"):
- OR-Tools' cost-scaling assignment, not scipy's sparse LAPJV (min_weight_full_bipartite_matching): an order of
  magnitude faster on the same graph, same matching. POT has no sparse LAP; PyPI's `lap.lapmod` crashed on it.
- The matmul's dtype follows the hardware (matmul_dtype): bf16 where it is native (AMX/AVX512-BF16 CPUs, CUDA),
  where it is several times faster than float32 at the same quality; float32 elsewhere, because an AVX2 CPU
  emulates bf16 and is then several times slower (ism.system.machine). Pools below BF16_MIN_PAIRS stay in float32.
- Sampled duals, not the full Hungarian reduction: one pass over the N^2 matrix instead of two, and a better graph
  (single outliers pull the full column minima).
- Orphan columns only, not column candidates for every column: faster at the same quality.
- A repeated row is one supply node of a min-cost flow (see sparse_assign): far nearer the optimum than giving each
  copy only its own k candidates.
- No Sinkhorn plan (POT's or a hand-written log-domain one): no better candidates at several times the cost.
OR-Tools' solve holds the GIL (measured: a solve in a thread starves the main thread's loop), so with prefetch the
LAP part still lands on the training thread; the dense part releases it.
"""
from __future__ import annotations

import numpy as np
import torch
from ortools.graph.python import linear_sum_assignment as _ortools_lsa
from ortools.graph.python import min_cost_flow as _ortools_mcf
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ism.system.machine import native_bf16

SOLVERS = ("auto", "exact", "sparse")
# auto: exact up to this many pairs per (sub-)problem, sparse above: exact is fast and optimal there, and grows
# about cubically beyond, where sparse stays within a fraction of a percent (the measurements: benchmarks/results.md,
# "sOT solvers at the paper's scale").
AUTO_EXACT_MAX = 1024
# dense cost rows held at once by the sparse solver (2,048 of 8,192 in bf16): blocks of this size stayed nearer the
# cache than one block or smaller ones (benchmarks/results.md, "sOT solvers: why each part").
BLOCK_BYTES = 32 * 2 ** 20
BF16_MIN_PAIRS = 2048  # where bf16 is native, the sparse solver's matmul runs in bf16 from this pool size on
MULT_CAP = 8  # a row repeated m times keeps k * min(m, MULT_CAP) candidates for its m copies
ORPHAN_SHARE = 0.25  # columns chosen by fewer than this share of k rows get their own k candidates
DUAL_SAMPLE = 1024  # rows whose Hungarian reduction estimates the column duals v
LAP_LEVELS = 2 ** 30  # integer levels of the edge weights for OR-Tools at most (8,192 pairs: as fast as 2^20)


def exact_assign(a: Tensor, b: Tensor) -> Tensor:
    """perm minimising sum_i ||b[perm[i]] - a[i]||^2 exactly (scipy's dense LAP on float64, CPU)."""
    a, b = a.double().cpu(), b.double().cpu()
    cost = torch.cdist(a, b).square_()  # rows: data a[i], columns: noise b[j]
    # Subtracting row then column minima changes every assignment's total by the same constant, so the optimum is
    # unchanged, but scipy's solver starts from zero duals and runs several times faster on data-vs-noise costs; it is
    # the classic Hungarian reduction step.
    cost -= cost.amin(dim=1, keepdim=True)
    cost -= cost.amin(dim=0, keepdim=True)
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(np.asarray(cols)[np.argsort(rows)], dtype=torch.long)


def matmul_dtype(n: int, device: torch.device | str = "cpu", flags: frozenset[str] | None = None) -> torch.dtype:
    """The sparse solver's candidate-search dtype for n pairs on device: bf16 from BF16_MIN_PAIRS pairs on where
    bf16 is native (ism.system.machine.native_bf16; flags: CPU flags to judge, default this machine's), else float32."""
    return torch.bfloat16 if n >= BF16_MIN_PAIRS and native_bf16(device, flags) else torch.float32


def _sqnorm(x: Tensor) -> Tensor:
    """Row-wise squared norms without an N x D temporary."""
    return torch.linalg.vector_norm(x, dim=1).square_()


def _duplicates(a: Tensor, an: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Groups of equal rows of a: (group of each row, first row of each group (ascending), group sizes); groups are
    numbered by their first row, so a pool without repeats gives 0..N-1. Rows whose (squared norm, sum) key is unique
    are unique; the rest are grouped by exact equality (torch.unique over rows), so permuted or one-hot rows that
    share a key are never merged. Both passes are a small part of a solve."""
    n = len(a)
    _, kg, kc = torch.unique(torch.stack([an, a.sum(1)], 1), dim=0, return_inverse=True, return_counts=True)
    rep = torch.arange(n, device=a.device)  # each row's representative: the first row equal to it
    shared = (kc[kg] > 1).nonzero().squeeze(1)
    if len(shared):
        _, inv = torch.unique(a[shared], dim=0, return_inverse=True)
        low = torch.full((int(inv.max()) + 1,), n, device=a.device).scatter_reduce_(0, inv, shared, "amin")
        rep[shared] = low[inv]
    first, grp = torch.unique(rep, return_inverse=True)
    return grp, first, torch.bincount(grp)


def _topk_rows(x: Tensor, y: Tensor, bias: Tensor, k: int, rows: int, ordered: bool = False
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Values and indices of the k smallest of bias[j] - 2 x[i].y[j] for every row i, in row blocks, and the
    entries (i, i) of the same matrix where they exist (for the identity pairs; meaningful when x, y are the pool)."""
    val = torch.empty(len(x), k, dtype=x.dtype, device=x.device)
    idx = torch.empty(len(x), k, dtype=torch.long, device=x.device)
    diag = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for s in range(0, len(x), rows):
        blk = torch.addmm(bias[None], x[s:s + rows], y.T, alpha=-2.0)
        val[s:s + len(blk)], idx[s:s + len(blk)] = blk.topk(k, dim=1, largest=False, sorted=ordered)
        if len(x) <= len(y):
            diag[s:s + len(blk)] = blk[:, s:s + len(blk)].diagonal()
    return val, idx, diag


def _solve_transport(g: Tensor, c: Tensor, w: Tensor, grp: Tensor, sizes: Tensor) -> Tensor:
    """perm[i] = column given to row i by the exact min-cost flow on the edges (g, c, w) from row groups g (supply:
    the group's size) to columns (demand 1 each); the rows of a group take its columns in pool order. Without
    repeated rows that is the assignment problem, solved by OR-Tools' assignment solver; with them by its min-cost
    flow. Both are cost-scaling push-relabel (why OR-Tools: benchmarks/results.md, "sOT solvers: why each part")."""
    ng, n = len(sizes), len(grp)
    w = w.double().cpu().numpy()
    w = w - w.min()
    # as many levels as OR-Tools' price bounds allow (~n^2 x the largest cost must fit in int64): one far-off edge
    # then cannot round every ordinary edge to 0 (2^20 levels lost 16-25 % of the gain on such pools; 2^36 overflowed
    # the assignment solver at n = 8,192)
    levels = min(LAP_LEVELS, 2 ** 58 // (n + 1) ** 2)
    top = float(w.max())
    cost = np.rint(w * (levels / top if top > 0 else 0.0)).astype(np.int64)  # all-equal weights: all 0
    g, c = g.cpu().numpy(), c.cpu().numpy()
    if ng == n:
        lsa = _ortools_lsa.SimpleLinearSumAssignment()
        lsa.add_arcs_with_cost(g, c, cost)
        if lsa.solve() != lsa.OPTIMAL:  # cannot happen with the identity edges in the graph
            raise RuntimeError("sparse_assign: OR-Tools found no perfect matching on a graph that has one")
        return torch.tensor([lsa.right_mate(i) for i in range(n)], dtype=torch.long)
    flow = _ortools_mcf.SimpleMinCostFlow()
    flow.add_arcs_with_capacity_and_unit_cost(g, c + ng, np.ones(len(cost), dtype=np.int64), cost)
    flow.set_nodes_supplies(np.arange(ng + n), np.concatenate([sizes.cpu().numpy(), -np.ones(n, dtype=np.int64)]))
    if flow.solve() != flow.OPTIMAL:
        raise RuntimeError("sparse_assign: OR-Tools found no feasible flow on a graph that has one")
    used = torch.as_tensor(flow.flows(np.arange(len(cost))) > 0)
    ug, uc = torch.as_tensor(g)[used], torch.as_tensor(c)[used]
    perm = torch.empty(n, dtype=torch.long)
    perm[torch.sort(grp.cpu(), stable=True).indices] = uc[torch.sort(ug, stable=True).indices]
    return perm


# Over 60 lines on purpose: one algorithm (centre, candidate search in row blocks, dual sample, sparse LAP) whose steps
# share the same blocks and norms; the module doc walks through it step by step.
@torch.no_grad()
def sparse_assign(a: Tensor, b: Tensor, candidates: int = 32, block_bytes: int = BLOCK_BYTES, seed: int = 0,
                  dtype: torch.dtype | None = None) -> Tensor:
    """perm pairing b[perm[i]] with a[i]: the exact optimum on the candidate graph of the module doc. a, b: [N, D]
    on any device; returns a CPU long perm. seed picks the dual sample (same inputs and seed: same perm). dtype of
    the matmul: matmul_dtype's choice for this size and device unless given. Memory: row blocks of at most
    block_bytes."""
    n, dev = len(a), a.device
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    a, b = a.float(), b.float()
    an, bn = _sqnorm(a), _sqnorm(b)
    # One shift of both sets leaves every pairing's cost difference unchanged; centring keeps |a|^2 - 2ab + |b|^2
    # from cancelling large norms in float32/bf16 (measured: an offset of 10 on both sets lost 19 % of the OT gain).
    # Skipped when the common mean is below bf16's resolution of the norms (zero-mean latents).
    centre = (a.sum(0) + b.sum(0)) / (2 * n)
    if float(centre.square().sum()) > 1e-4 * float(an.mean() + bn.mean()) / 2:
        a, b = a - centre, b - centre
        an, bn = _sqnorm(a), _sqnorm(b)
    dt = dtype or matmul_dtype(n, dev)
    k = min(candidates, n)
    if not (bool(torch.isfinite(an).all()) and bool(torch.isfinite(bn).all())):
        raise ValueError("sparse_assign: squared norms overflow float32 (or the input holds NaN/inf); values of "
                         f"this size need ot.solver=exact (float64). Largest |x|: {float(a.abs().max()):.3g}")
    ah, bh = a.to(dt), b.to(dt)
    gen = torch.Generator().manual_seed(seed)
    # column duals v: Hungarian reduction (row minima, then column minima) of a sample of rows; |a_i|^2 cancels
    sample = torch.randperm(n, generator=gen)[:DUAL_SAMPLE].to(dev) if n > DUAL_SAMPLE else slice(None)
    cs = bn[None] - 2 * (ah[sample] @ bh.T).float()
    v = (cs - cs.amin(1, keepdim=True)).amin(0)
    del cs
    # rows: the k smallest of c_ij - v_j (the row constant |a_i|^2 dropped, the bias centred for bf16's range). A
    # row repeated m times (a pool larger than the data set, e.g. 32,768 MNIST digits of 4,500) is one supply node of
    # m units with its k*m cheapest columns (m capped at MULT_CAP): the graph stays ~kN edges, and the flow is exact
    # on it: faster and cheaper than giving each copy its own k*m candidates (benchmarks/results.md, "sOT solvers:
    # why each part").
    grp, first, sizes = _duplicates(a, an)
    mult = sizes.clamp(max=MULT_CAP)
    kr = min(n, k * int(mult.max()))
    rows = max(1, block_bytes // (ah.element_size() * n))
    rbias = bn - v
    rmean = rbias.mean()
    ahu, anu = (ah, an) if len(first) == n else (ah[first], an[first])  # one row per group
    # sorted when groups keep different numbers (k*m) of their cheapest candidates
    rval, ridx, rdiag = _topk_rows(ahu, bh, (rbias - rmean).to(dt), kr, rows, ordered=kr > k)
    rval = rval.float() + rmean  # c_ij - v_j - |a_i|^2 of each distinct row
    u = rval.amin(1) + anu  # u = min_j c_ij - v_j: the exact row reduction given v, per group
    keep = torch.arange(kr, device=dev)[None] < (k * mult)[:, None]
    er, ec = torch.arange(len(first), device=dev)[:, None].expand(-1, kr)[keep], ridx[keep]
    ew = (rval + (anu - u)[:, None])[keep]  # reduced cost c_ij - u_i - v_j
    # orphan columns (chosen by fewer than ORPHAN_SHARE * k rows): their own k smallest c_ij - u_i over the rows
    cols = (torch.bincount(ec, minlength=n) < max(1, int(ORPHAN_SHARE * k))).nonzero().squeeze(1)
    if len(cols):
        kc = min(k, len(first))
        cbias = anu - u
        cmean = cbias.mean()
        cval, cidx, _ = _topk_rows(bh[cols], ahu, (cbias - cmean).to(dt), kc, rows)
        er, ec = torch.cat([er, cidx.reshape(-1)]), torch.cat([ec, cols.repeat_interleave(kc)])
        ew = torch.cat([ew, (cval.float() + cmean + (bn - v)[cols, None]).reshape(-1)])
    # the identity pairs: a perfect matching always exists
    ar = torch.arange(n, device=dev)
    if len(first) == n:  # no repeated rows: c_ii - u_i - v_i is the row pass's diagonal
        diag = rdiag.float() + rmean + an - u
    else:
        diag = _sqnorm(a - b) - u[grp] - v
    er, ec, ew = torch.cat([er, grp]), torch.cat([ec, ar]), torch.cat([ew, diag])
    # an edge found twice (as a row's and as a column's candidate) is kept once, with its first weight
    key, inv = torch.unique(er * n + ec, return_inverse=True)
    once = torch.full((len(key),), len(inv), device=dev).scatter_reduce_(0, inv, torch.arange(len(inv), device=dev),
                                                                          "amin")
    return _solve_transport(key // n, key % n, ew[once], grp, sizes)


def assign(a: Tensor, b: Tensor, solver: str = "exact", candidates: int = 32) -> Tensor:
    """perm pairing b[perm[i]] with a[i] (a: data rows, b: noise rows, [N, D]) by `solver` (SOLVERS)."""
    if solver == "auto":
        solver = "exact" if len(a) <= AUTO_EXACT_MAX else "sparse"
    if solver == "exact":
        return exact_assign(a, b)
    if solver == "sparse":
        return sparse_assign(a, b, candidates)
    raise ValueError(f"assign: solver must be one of {SOLVERS}, got {solver!r}")
