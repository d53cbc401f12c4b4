"""sOT solvers: the exact path is today's, the sparse one returns a valid near-optimal permutation, the config's
solver and pool scope are what PairSource uses."""
from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
import torch

from ism.conf.config import ConfigError, from_dict
from ism.training.objective import ot_solvers
from ism.training.objective.coupling import PairSource, ot_assign
from ism.training.objective.ot_solvers import assign, exact_assign, sparse_assign

torch.set_num_threads(1)


def _cost(a: torch.Tensor, b: torch.Tensor, perm: torch.Tensor) -> float:
    return (a.double() - b[perm].double()).square().sum().item()


def _valid(perm: torch.Tensor, n: int) -> bool:
    return perm.dtype == torch.long and sorted(perm.tolist()) == list(range(n))


def _digits_like(n: int, d: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered 'data' (10 prototypes + small spread) and N(0, I) noise: the structure of data-vs-noise sOT."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(10, d, generator=g) * 1.5
    data = protos[torch.randint(0, 10, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    return data, torch.randn(n, d, generator=g)


def test_exact_path_is_unchanged():
    """The pairs scipy's exact solve gave before solvers were selectable (digests taken from that code)."""
    g = torch.Generator().manual_seed(7)
    x0, x1 = torch.randn(300, 1, 8, 8, generator=g), torch.randn(300, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    for labels, want in ((None, "8f244252f73ea41d"), (y, "770a042ac27033f8")):
        for solver in ("exact", "auto"):  # auto is exact at this size, so small pools keep today's pairs
            perm, _ = ot_assign(x0, x1, labels=labels, solver=solver)
            assert hashlib.sha256(perm.numpy().tobytes()).hexdigest()[:16] == want, (solver, labels is None)


@pytest.mark.parametrize("n", [1, 2, 3, 17])
def test_sparse_tiny_sizes_are_optimal(n):
    a, b = _digits_like(n, d=5, seed=n)
    perm = sparse_assign(a, b, candidates=32)
    assert _valid(perm, n)
    assert _cost(a, b, perm) == pytest.approx(_cost(a, b, exact_assign(a, b)), rel=1e-6)  # k >= n: the full graph


@pytest.mark.parametrize("case", ["ties", "duplicates", "one_point", "k1"])
def test_sparse_adversarial_inputs_give_permutations(case):
    g = torch.Generator().manual_seed(1)
    n = 200
    a, b = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    k = 32
    if case == "ties":          # every cost equal: any permutation is optimal, one must still come back
        a, b = torch.ones(n, 8), torch.ones(n, 8)
    elif case == "duplicates":  # each data row 4 times, noise rows twice
        a, b = a[:50].repeat(4, 1), b[:100].repeat(2, 1)
    elif case == "one_point":   # all data on one point: all row candidates identical
        a = torch.zeros(n, 8)
    else:                       # one candidate per row/column: feasibility rests on the identity edges
        k = 1
    perm = sparse_assign(a, b, candidates=k)
    assert _valid(perm, n)
    assert _cost(a, b, perm) <= _cost(a, b, torch.arange(n)) + 1e-6 * abs(_cost(a, b, torch.arange(n)))
    if case != "k1":
        assert _cost(a, b, perm) <= _cost(a, b, exact_assign(a, b)) * 1.01 + 1e-9


def test_sparse_is_within_one_percent_of_the_exact_cost_and_deterministic():
    a, b = _digits_like(1500, seed=3)
    perm = sparse_assign(a, b)
    exact, ident = _cost(a, b, exact_assign(a, b)), _cost(a, b, torch.arange(len(a)))
    got = _cost(a, b, perm)
    assert exact <= got <= exact * 1.01
    assert (got - exact) < 0.1 * (ident - exact)  # and it keeps > 90 % of what OT gains over the identity
    assert torch.equal(perm, sparse_assign(a, b))
    # row blocks (bounded memory: 64 rows of 1500 at a time) give the same graph, hence the same permutation
    assert torch.equal(perm, sparse_assign(a, b, block_bytes=64 * 4 * 1500))


def test_bf16_pools_are_within_one_percent_deterministic_and_match_float32():
    """bf16 candidate search (the choice where bf16 is native; forced here, so it is tested on every CPU): still a
    permutation within 1 % of the optimum (and most of the OT gain kept), the same for the same seed, and as good as
    the float32 graph."""
    n = ot_solvers.BF16_MIN_PAIRS
    a, b = _digits_like(n, seed=11)
    bf16 = torch.bfloat16
    perm = sparse_assign(a, b, dtype=bf16)
    assert _valid(perm, n)
    exact, ident, got = _cost(a, b, exact_assign(a, b)), _cost(a, b, torch.arange(n)), _cost(a, b, perm)
    assert exact <= got <= exact * 1.01
    assert (got - exact) < 0.1 * (ident - exact)
    assert torch.equal(perm, sparse_assign(a, b, dtype=bf16))
    assert torch.equal(perm, sparse_assign(a, b, block_bytes=2 * n * 100, dtype=bf16))  # blocks of 100 rows
    f32 = _cost(a, b, sparse_assign(a, b, dtype=torch.float32))
    assert abs(got - f32) < 0.05 * (ident - exact)


def _flags_from_cpuinfo() -> set[str]:
    """This machine's CPU flags, read here independently of ism.system.machine."""
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        return set()
    return set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))


def test_the_candidate_dtype_follows_the_cpu_capability():
    """bf16 only where the CPU has native bf16 dot products (AMX-BF16 or AVX512-BF16) and the pool is large enough;
    an AVX2-only CPU (where emulated bf16 is several times slower) gets float32. This machine gets its flags' choice."""
    big, small = ot_solvers.BF16_MIN_PAIRS, ot_solvers.BF16_MIN_PAIRS - 1
    avx2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
    amx, avx512bf16 = avx2 | {"avx512f", "amx_tile", "amx_bf16"}, avx2 | {"avx512f", "avx512_bf16"}
    assert ot_solvers.matmul_dtype(big, "cpu", avx2) == torch.float32
    assert ot_solvers.matmul_dtype(big, "cpu", avx2 | {"avx512f", "avx512bw"}) == torch.float32
    assert ot_solvers.matmul_dtype(big, "cpu", amx) == torch.bfloat16
    assert ot_solvers.matmul_dtype(big, "cpu", avx512bf16) == torch.bfloat16
    assert ot_solvers.matmul_dtype(small, "cpu", amx) == torch.float32
    assert ot_solvers.matmul_dtype(big, "cpu", frozenset()) == torch.float32  # unknown CPU: the safe choice
    native = bool(_flags_from_cpuinfo() & {"amx_bf16", "avx512_bf16"})
    assert ot_solvers.matmul_dtype(big) == (torch.bfloat16 if native else torch.float32)


def test_repeated_rows_are_one_supply_node():
    """A pool larger than the data set repeats rows: each distinct row is solved once as a supply of m units (min-cost
    flow), its copies take distinct columns, and the cost stays near the optimum."""
    a, b = _digits_like(300, d=16, seed=4)
    a = a[:60].repeat(5, 1)[torch.randperm(300, generator=torch.Generator().manual_seed(0))]
    grp, first, sizes = ot_solvers._duplicates(a, a.square().sum(1))
    assert len(first) == 60 and sizes.tolist() == [5] * 60
    assert torch.equal(grp[first], torch.arange(60)) and bool((first[1:] > first[:-1]).all())
    assert all(torch.equal(a[i], a[first[grp[i]]]) for i in range(300))
    perm = sparse_assign(a, b, candidates=8)
    assert _valid(perm, 300)
    assert _cost(a, b, perm) <= _cost(a, b, exact_assign(a, b)) * 1.01
    # without repeats the groups are the rows themselves (the assignment solver's path)
    grp, first, sizes = ot_solvers._duplicates(b, b.square().sum(1))
    assert torch.equal(grp, torch.arange(300)) and torch.equal(first, torch.arange(300)) and bool((sizes == 1).all())


def test_rows_equal_only_in_norm_and_sum_are_not_merged_and_a_common_shift_changes_nothing():
    """Regressions from a review: distinct rows sharing the duplicate key (one-hot rows, permuted entries) stay
    distinct; shifting both sets by one vector (their optimum is the same) keeps the solver near the optimum in bf16;
    norms beyond float32 are a clear error, not a silent identity."""
    g = torch.Generator().manual_seed(6)
    a = torch.eye(300)[torch.randperm(300, generator=g)]  # every row: norm 1, sum 1
    b = torch.randn(300, 300, generator=g) * 0.1
    grp, first, _ = ot_solvers._duplicates(a, a.square().sum(1))
    assert len(first) == 300
    exact, ident = _cost(a, b, exact_assign(a, b)), _cost(a, b, torch.arange(300))
    got = _cost(a, b, sparse_assign(a, b))
    assert got - exact < 0.1 * (ident - exact)
    n = ot_solvers.BF16_MIN_PAIRS
    a, b = _digits_like(n, seed=12)
    exact, ident = _cost(a, b, exact_assign(a, b)), _cost(a, b, torch.arange(n))
    for shift in (0.0, 10.0):
        for dt in (torch.bfloat16, torch.float32):
            got = _cost(a, b, sparse_assign(a + shift, b + shift, dtype=dt))
            assert got - exact < 0.05 * (ident - exact), (shift, dt)
    with pytest.raises(ValueError, match="ot.solver=exact"):
        sparse_assign(torch.full((8, 4), 1e20, dtype=torch.float64), torch.zeros(8, 4, dtype=torch.float64))


def test_one_far_off_pair_does_not_flatten_the_other_costs():
    """The integer cost scale of the LAP is set by the largest edge; with one far-off row and column (an identity edge
    of ~3e7 against a median of ~6) 2^20 levels rounded every other edge to 0-1 levels and lost 16 % of the other
    rows' OT gain; 2^30 levels lose 0.1 %."""
    a, b = _digits_like(500, d=16, seed=2)
    a[0], b[0] = 1e3, -1e3
    rest_gain = _cost(a[1:], b[1:], torch.arange(499)) - _cost(a[1:], b[1:], exact_assign(a[1:], b[1:]))
    assert _cost(a, b, sparse_assign(a, b)) - _cost(a, b, exact_assign(a, b)) < 0.02 * rest_gain


def test_candidates_trade_time_for_cost():
    a, b = _digits_like(600, seed=5)
    costs = [_cost(a, b, sparse_assign(a, b, candidates=k)) for k in (1, 4, 64)]
    assert costs[0] > costs[1] >= costs[2]


def test_auto_switches_to_sparse_above_the_exact_limit(monkeypatch):
    used = []
    monkeypatch.setattr(ot_solvers, "exact_assign", lambda a, b: used.append("exact") or torch.arange(len(a)))
    monkeypatch.setattr(ot_solvers, "sparse_assign", lambda a, b, k: used.append("sparse") or torch.arange(len(a)))
    for n in (ot_solvers.AUTO_EXACT_MAX, ot_solvers.AUTO_EXACT_MAX + 1):
        assign(torch.zeros(n, 1), torch.zeros(n, 1), "auto")
    assign(torch.zeros(4, 1), torch.zeros(4, 1), "sparse")
    assert used == ["exact", "sparse", "sparse"]
    with pytest.raises(ValueError, match="solver"):
        assign(torch.zeros(4, 1), torch.zeros(4, 1), "hungarian")


def _data(n: int = 256, classes: int = 4) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 1, 4, 4, generator=g) + y.float()[:, None, None, None]
    return SimpleNamespace(name="synthetic", train_x=x, train_y=y, shape=(1, 4, 4))


def _src(**ot) -> PairSource:
    return PairSource(_data(), from_dict({"ot": {"enabled": True, "pool_batches": 4, "prefetch": False, **ot},
                                          "optim": {"batch_size": 16}, "run": {"seed": 2}}))


def test_the_configured_solver_is_the_one_used():
    exact = _src(solver="exact", coupling="global").batch(0)[3]
    sparse1 = _src(solver="sparse", candidates=1, coupling="global").batch(0)[3]
    sparse64 = _src(solver="sparse", candidates=64, coupling="global").batch(0)[3]
    # one candidate per row and column cannot reach the optimum of 64 pairs; 64 candidates (the full graph) do
    assert sparse1["ot/cost_after"] > exact["ot/cost_after"] * (1 + 1e-6)
    assert sparse64["ot/cost_after"] == pytest.approx(exact["ot/cost_after"], rel=1e-9)
    with pytest.raises(ConfigError, match="ot.solver"):
        from_dict({"ot": {"solver": "hungarian"}})


def test_class_coupling_composes_with_the_sparse_solver():
    """Per-class sub-problems go to the sparse solver too: every image keeps noise drawn for its own class."""
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (600,), generator=g)
    x1 = torch.randn(600, 1, 8, 8, generator=g) + y.float()[:, None, None, None]
    x0 = torch.randn(600, 1, 8, 8, generator=g)
    perm, diag = ot_assign(x0, x1, labels=y, solver="sparse", candidates=8)
    assert _valid(perm, 600) and torch.equal(y[perm], y)
    _, exact = ot_assign(x0, x1, labels=y, solver="exact")
    assert exact["ot/cost_after"] <= diag["ot/cost_after"] <= exact["ot/cost_after"] * 1.01


def test_device_pools_solve_each_shard_alone():
    b, k, n = 16, 4, 4
    glob = _src(coupling="global")
    dev = _src(coupling="global", pool_scope="device", devices=n)
    dev_cls = _src(pool_scope="device", devices=n)  # composes with the class coupling
    idx, noise = glob._pool_draws(0)
    x1, y = glob.x[idx], glob.y[idx]
    shard = (torch.arange(b) // (b // n)).repeat(k)
    assert torch.equal(dev.shard, shard)
    for src, by_class in ((dev, False), (dev_cls, True)):
        perm, _ = ot_assign(noise, x1, labels=y if by_class else None, groups=src.shard)
        assert torch.equal(shard[perm], shard)  # every rank's noise stays on that rank
        if by_class:
            assert torch.equal(y[perm], y)
        # and PairSource serves exactly these pairs
        assert torch.equal(torch.cat([src.batch(s)[2] for s in range(k)]), noise[perm])
    # the global pool pairs across shards, and does better on cost than N smaller pools
    gp, gd = ot_assign(noise, x1)
    dp, dd = ot_assign(noise, x1, groups=shard)
    assert not torch.equal(shard[gp], shard) and gd["ot/cost_after"] < dd["ot/cost_after"]
    assert _src(pool_scope="device", devices=1).shard is None  # one rank: its shard is the global pool
    with pytest.raises(ConfigError, match="ot.devices"):
        from_dict({"ot": {"enabled": True, "pool_scope": "device", "devices": 3}, "optim": {"batch_size": 16}})


def test_the_gpu_presets_choose_auto():
    """(That the solver keys keep stored run ids: tests/test_run_identity.py.)"""
    from ism.conf.config import resolve
    for preset in ("fashion-gpu", "cifar10-gpu", "imagenet-latents-gpu"):  # 8,192-pair pools: exact would stall
        assert resolve(preset, overrides={"data.path": "x"}).ot.solver == "auto"
