"""Assignment solvers for sOT: the exact optimum (scipy) and a fast sparse one that still returns a permutation.

exact: scipy's linear_sum_assignment on the dense float64 squared-Euclidean cost, O(N^3): 0.23 s at 1,024 pairs,
6.6 s at 4,096, 53 s at 8,192 on this machine (benchmarks/results.md) -- a stall at the paper's pool of 8,192.

sparse: the same assignment problem restricted to a candidate graph, solved *exactly on that graph* by scipy's sparse
LAP (csgraph.min_weight_full_bipartite_matching, LAPJVsp). The candidates of each row and of each column are its k
smallest *reduced* costs c_ij - u_i - v_j, where u, v are the Hungarian reduction (row minima, then column minima of
what is left): the optimal pairs of data-vs-noise costs lie almost always among a row's or column's few cheapest
reduced costs, so the graph keeps ~2kN of N^2 edges and the result is a true permutation within a hair of the
optimum. The identity pairing is added to the graph, so a perfect matching always exists (worst case: a sparse
optimum no worse than the identity's pairs it can use). The dense part (cost blocks, minima, top-k) runs in torch on
the model's device, under no_grad, in row blocks of at most ~256 MiB; only the ~2kN candidate edges go to the CPU.

Measured (benchmarks/results.md; MNIST 1x16x16 digits vs N(0, I) noise, CPU seconds on 2 threads, k=32):
N=4,096: 0.93 s vs 7.3 s exact (scipy) and 10.2 s (POT's ot.emd), cost gap 0.02 %; N=8,192: 7.2 s vs 58 s, gap
0.17 %. POT's log-domain Sinkhorn plus a rounding reaches the optimum's cost but took 2.5 s at 1,024 and 8.5 s at
2,048 (scipy: 0.35 / 1.5 s); a hand-written torch log-domain Sinkhorn with eps-scaling took 6 s at 4,096 for its
duals alone (used as u, v with 8 candidates: 0.56 % gap, vs 0.92 % for the Hungarian reduction with 8 and 0.02 %
with 32 in 0.93 s in all) -- better duals cost more than more candidates, so the solver is torch (dense top-k) plus
scipy (sparse exact LAP), with nothing iterative written by hand.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from torch import Tensor

SOLVERS = ("auto", "exact", "sparse")
# auto: exact up to this many pairs per (sub-)problem, sparse above. Exact takes 1.4 s at 2,048 pairs (solved in the
# prefetch thread, hidden behind training) but 6.6 s at 4,096 and 53 s at 8,192, where sparse takes < 1 s.
AUTO_EXACT_MAX = 2048
BLOCK_BYTES = 256 * 2 ** 20  # dense cost rows held at once by the sparse solver (8,192^2 float32 = 256 MiB)


def exact_assign(a: Tensor, b: Tensor) -> Tensor:
    """perm minimising sum_i ||b[perm[i]] - a[i]||^2 exactly (scipy's dense LAP on float64, CPU)."""
    a, b = a.double().cpu(), b.double().cpu()
    cost = torch.cdist(a, b).square_()  # rows: data a[i], columns: noise b[j]
    # Subtracting row then column minima changes every assignment's total by the same constant, so the optimum is
    # unchanged, but scipy's solver starts from zero duals and runs ~4x faster on data-vs-noise costs (measured on
    # MNIST 16x16, N=2048: 4.7 s -> 1.1 s); it is the classic Hungarian reduction step.
    cost -= cost.amin(dim=1, keepdim=True)
    cost -= cost.amin(dim=0, keepdim=True)
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(np.asarray(cols)[np.argsort(rows)], dtype=torch.long)


def _cost_blocks(a: Tensor, b: Tensor, rows: int, u: Tensor | None = None, v: Tensor | None = None):
    """(start, float32 block) of squared distances a[start:start+rows] x b, minus u[row] + v[col] when given."""
    an, bn = a.square().sum(1), b.square().sum(1)
    if v is not None:
        bn = bn - v
    if u is not None:
        an = an - u
    for s in range(0, len(a), rows):
        yield s, torch.addmm(bn[None], a[s:s + rows], b.T, alpha=-2.0).add_(an[s:s + rows, None])


def _row_topk(blocks, n: int, k: int, dev, ordered: bool = False) -> tuple[Tensor, Tensor]:
    """Values and column indices of each row's k smallest entries over (start, block) row blocks."""
    val, idx = torch.empty(n, k, device=dev), torch.empty(n, k, dtype=torch.long, device=dev)
    for s, c in blocks:
        val[s:s + len(c)], idx[s:s + len(c)] = c.topk(k, dim=1, largest=False, sorted=ordered)
    return val, idx


@torch.no_grad()
def sparse_assign(a: Tensor, b: Tensor, candidates: int = 32, block_bytes: int = BLOCK_BYTES) -> Tensor:
    """perm pairing b[perm[i]] with a[i]: the exact optimum over each row's and column's `candidates` cheapest
    reduced costs plus the identity pairs (see the module doc). a, b: [N, D] on any device; returns a CPU long perm.
    Memory: dense blocks of at most block_bytes (when the whole N x N matrix fits, it and its transpose are held)."""
    n, dev = len(a), a.device
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    a, b = a.float(), b.float()
    k = min(candidates, n)
    # Rows repeated m times (a pool larger than the data set, e.g. 8,192 MNIST digits of 4,500) share one candidate
    # list, which then has to serve m pairs: each copy gets the k*m cheapest (m capped at 8). Measured on the 8,192
    # MNIST pool (each digit ~twice): cost gap to the optimum 0.45 % -> 0.17 %, CPU 5.7 s -> 7.2 s (2 threads).
    mult = torch.unique(a, dim=0, return_inverse=True, return_counts=True)
    mult = mult[2][mult[1]].clamp(max=8)
    kr = min(n, k * int(mult.max()))
    rows = max(1, block_bytes // (4 * n))
    # u = row minima, v = column minima of c - u: the Hungarian reduction, so every reduced cost c - u - v is >= 0
    u, v = torch.empty(n, device=dev), torch.full((n,), float("inf"), device=dev)
    full = None
    for s, c in _cost_blocks(a, b, rows):
        u[s:s + len(c)] = c.amin(1)
        v = torch.minimum(v, c.sub_(u[s:s + len(c), None]).amin(0))
        if rows >= n:  # the whole matrix fits in one block: keep it instead of recomputing the matmul (1 of 3)
            full = c
    if full is not None:
        full.sub_(v[None])
        row_val, row_idx = _row_topk([(0, full)], n, kr, dev, ordered=kr > k)
        col_val, col_idx = _row_topk([(0, full.T.contiguous())], n, k, dev)  # topk along dim 0 is ~4x slower
        diag = full.diagonal().clone()
        del full
    else:  # one more pass over row blocks: rows' top-k, and columns' top-k merged block by block
        row_val, row_idx = torch.empty(n, kr, device=dev), torch.empty(n, kr, dtype=torch.long, device=dev)
        col_val, col_idx = torch.empty(n, 0, device=dev), torch.empty(n, 0, dtype=torch.long, device=dev)
        for s, c in _cost_blocks(a, b, rows, u, v):
            row_val[s:s + len(c)], row_idx[s:s + len(c)] = c.topk(kr, dim=1, largest=False, sorted=kr > k)
            bv, bi = c.T.contiguous().topk(min(k, len(c)), dim=1, largest=False, sorted=False)
            col_val, pos = torch.cat([col_val, bv], 1).topk(min(k, col_val.shape[1] + bv.shape[1]), dim=1,
                                                             largest=False, sorted=False)
            col_idx = torch.cat([col_idx, bi + s], 1).gather(1, pos)
        diag = (a - b).square().sum(1) - u - v
    ar = torch.arange(n, device=dev)
    kc = col_idx.shape[1]
    keep = (torch.arange(kr, device=dev)[None] < (k * mult.to(dev))[:, None]).reshape(-1)  # k*m per row copy
    r = torch.cat([ar.repeat_interleave(kr)[keep], col_idx.reshape(-1), ar])  # rows', columns', identity pairs
    cl = torch.cat([row_idx.reshape(-1)[keep], ar.repeat_interleave(kc), ar])
    val = torch.cat([row_val.reshape(-1)[keep], col_val.reshape(-1), diag]).double()
    key, inv = torch.unique(r * n + cl, return_inverse=True)  # an edge found twice carries ~the same value
    w = torch.zeros(len(key), dtype=torch.float64, device=dev).scatter_(0, inv, val)
    w = (w - w.min()).cpu().numpy()
    # LAPJVsp reads the sparse entries as edges; a constant shift keeps them positive without changing the optimum
    # (every perfect matching has exactly n edges), scaled to the weights so no precision is lost.
    w += max(float(w.max()), 1e-300)
    graph = csr_matrix((w, ((key // n).cpu().numpy(), (key % n).cpu().numpy())), shape=(n, n))
    return torch.as_tensor(min_weight_full_bipartite_matching(graph)[1], dtype=torch.long)


def assign(a: Tensor, b: Tensor, solver: str = "exact", candidates: int = 32) -> Tensor:
    """perm pairing b[perm[i]] with a[i] (a: data rows, b: noise rows, [N, D]) by `solver` (SOLVERS)."""
    if solver == "auto":
        solver = "exact" if len(a) <= AUTO_EXACT_MAX else "sparse"
    if solver == "exact":
        return exact_assign(a, b)
    if solver == "sparse":
        return sparse_assign(a, b, candidates)
    raise ValueError(f"assign: solver must be one of {SOLVERS}, got {solver!r}")
