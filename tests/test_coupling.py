"""sOT: exact assignment, labels stay with images, deterministic pools that regenerate on resume, epoch coverage."""
from __future__ import annotations

import itertools
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from ism.conf.config import ConfigError, from_dict
from ism.training.objective.coupling import PairSource, ot_assign

torch.set_num_threads(1)


def _data(n: int = 100, shape=(1, 8, 8), classes: int = 10, seed: int = 0) -> SimpleNamespace:
    """A training set whose images encode their own label (so label/image association can be checked)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, *shape, generator=g)
    x.view(n, -1)[:, 0] = y.float() * 100 + torch.arange(n) / n  # unique per item, label recoverable
    return SimpleNamespace(name="synthetic", train_x=x, train_y=y, shape=shape)


def _cfg(ot: bool, k: int = 4, b: int = 8, seed: int = 3, res: int = 0):
    return from_dict({"ot": {"enabled": ot, "pool_batches": k, "cost_resolution": res},
                      "optim": {"batch_size": b}, "run": {"seed": seed}})


def _brute_force(x0: torch.Tensor, x1: torch.Tensor) -> float:
    n = len(x0)
    c = torch.cdist(x1.reshape(n, -1).double(), x0.reshape(n, -1).double()).square()
    return min(sum(c[i, p[i]].item() for i in range(n)) for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("seed", range(6))
def test_ot_assign_is_the_exact_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    n = 3 + seed % 5  # 3..7
    x0, x1 = torch.randn(n, 1, 4, 4, generator=g), torch.randn(n, 1, 4, 4, generator=g)
    perm, diag = ot_assign(x0, x1)
    assert sorted(perm.tolist()) == list(range(n))
    total = ((x0[perm].double() - x1.double()).reshape(n, -1).square().sum(dim=1)).sum().item()
    assert total == pytest.approx(_brute_force(x0, x1), rel=1e-9)
    assert diag["ot/cost_after"] == pytest.approx(total / n, rel=1e-9)
    assert diag["ot/cost_after"] <= diag["ot/cost_before"] + 1e-12
    assert diag["ot/solve_s"] >= 0


def test_ot_assign_pooled_cost_and_errors():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 1, 16, 16, generator=g), torch.randn(64, 1, 16, 16, generator=g)
    perm, diag = ot_assign(x0, x1, cost_resolution=4)
    assert sorted(perm.tolist()) == list(range(64))
    assert diag["ot/cost_after"] < diag["ot/cost_before"]  # reported at full resolution
    with pytest.raises(ConfigError, match="ot.cost_resolution"):
        ot_assign(torch.randn(8, 2), torch.randn(8, 2), cost_resolution=4)


def test_pool_pairs_noise_only_and_lowers_cost():
    data = _data()
    src = PairSource(data, _cfg(True, k=4, b=8))
    plain = PairSource(data, _cfg(False, b=8))
    for step in range(8):
        x1, y, x0, diag = src.batch(step)
        px1, py, px0, _ = plain.batch(step)
        # labels stay with their images: the data side is exactly the un-paired batch, in the same order
        assert torch.equal(x1, px1) and torch.equal(y, py)
        assert torch.equal(y, (x1.view(8, -1)[:, 0] // 100).long())
        assert diag["ot/solved"] == float(step % 4 == 0)
        assert (diag["ot/solve_s"] > 0) == (step % 4 == 0)  # solver time is charged to the step that solved
        assert diag["ot/cost_after"] < diag["ot/cost_before"]
    # the pool's noise is a permutation of the K steps' raw noise
    pool_noise = torch.cat([src.batch(s)[2] for s in range(4)])
    raw = torch.cat([plain.batch(s)[2] for s in range(4)])
    key = lambda t: sorted(map(tuple, t.view(len(t), -1)[:, :3].tolist()))
    assert key(pool_noise) == key(raw) and not torch.equal(pool_noise, raw)
    # data (x1, y) multiset over the pool unchanged
    assert Counter(torch.cat([src.batch(s)[1] for s in range(4)]).tolist()) == \
        Counter(torch.cat([plain.batch(s)[1] for s in range(4)]).tolist())


def test_deterministic_and_resume_mid_pool():
    data = _data()
    cfg = _cfg(True, k=4, b=8)
    a = PairSource(data, cfg)
    ref = [a.batch(s) for s in range(10)]
    b = PairSource(data, cfg)  # "resumed" at step 6, in the middle of pool 1 (steps 4..7)
    state = a.state_dict(6)
    assert state == {"pool_index": 1, "position": 6 * 8}
    b.load_state_dict(state, step=6)
    for s in range(6, 10):
        x1, y, x0, _ = b.batch(s)
        assert torch.equal(x1, ref[s][0]) and torch.equal(y, ref[s][1]) and torch.equal(x0, ref[s][2])
    assert b.state_dict() == {"pool_index": 2, "position": 80}
    with pytest.raises(ValueError, match="does not match"):
        PairSource(data, cfg).load_state_dict(state, step=7)
    with pytest.raises(ValueError, match="does not match"):
        PairSource(data, cfg).load_state_dict({"pool_index": 0, "position": 48})
    # another seed gives other batches
    other = PairSource(data, _cfg(True, k=4, b=8, seed=4)).batch(0)
    assert not torch.equal(other[2], ref[0][2])


def test_without_ot_epochs_cover_the_data_without_repeats():
    data = _data(n=40)
    src = PairSource(data, _cfg(False, b=8))
    ids = lambda x: (x.view(len(x), -1)[:, 0] % 1 * 40).round().long().tolist()
    epoch0 = sum((ids(src.batch(s)[0]) for s in range(5)), [])
    epoch1 = sum((ids(src.batch(s)[0]) for s in range(5, 10)), [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(40))
    assert epoch0 != epoch1  # a fresh permutation per epoch
    # a batch straddling epochs (batch 12 over 40 items) still follows the global position rule
    src12 = PairSource(data, _cfg(False, b=12))
    seen = sum((ids(src12.batch(s)[0]) for s in range(10)), [])  # 120 positions = 3 epochs
    assert all(sorted(seen[i * 40:(i + 1) * 40]) == list(range(40)) for i in range(3))
    assert src12.state_dict() == {"pool_index": -1, "position": 120}
    x1, y, x0, diag = src.batch(0)
    assert x0.shape == x1.shape == (8, 1, 8, 8) and y.dtype == torch.int64 and "ot/batch_cost" in diag
    assert torch.equal(x0, src.batch(0)[2])


def test_points_data():
    pts = SimpleNamespace(name="toy", train_x=torch.randn(50, 2), train_y=torch.zeros(50, dtype=torch.long), shape=(2,))
    src = PairSource(pts, _cfg(True, k=2, b=10))
    x1, y, x0, diag = src.batch(3)
    assert x0.shape == (10, 2) and diag["ot/cost_after"] <= diag["ot/cost_before"]


def test_prefetch_solves_the_next_pool_while_the_current_one_trains():
    """Pool 1 is solved in a background thread while pool 0's steps train: it completes between two batch() calls,
    before the step that needs it, and that step finds it ready. Without prefetch it is solved inside that step."""
    import threading
    go, solved = threading.Event(), threading.Event()
    where = []

    def gated(src):
        solve, calls = src._solve, []

        def wrapped(x0, idx):
            calls.append(1)
            if len(calls) > 1:  # pool 1; pool 0 is solved by the first batch() call in either mode
                assert go.wait(30), "the training thread never let the solve run"
            where.append(threading.current_thread().name)
            out = solve(x0, idx)
            if len(calls) > 1:
                solved.set()
            return out
        src._solve = wrapped
        return src

    cfg = {"ot": {"enabled": True, "pool_batches": 4}, "optim": {"batch_size": 8}, "run": {"seed": 3, "steps": 8}}
    on = gated(PairSource(_data(), from_dict({**cfg, "ot": {**cfg["ot"], "prefetch": True}})))
    on.batch(0)                   # returns while pool 1's solve is still held back: it is not on this thread
    assert not solved.is_set()
    go.set()                      # "training" steps 0-3; the solve runs meanwhile
    assert solved.wait(30), "pool 1 was solved while pool 0 trained, outside any batch() call"
    for step in range(1, 5):
        on.batch(step)
    assert where == [threading.main_thread().name, "sot-pool-1"]
    where.clear(), go.clear(), solved.clear()
    off = gated(PairSource(_data(), from_dict({**cfg, "ot": {**cfg["ot"], "prefetch": False}})))
    go.set()
    for step in range(4):
        off.batch(step)
    assert not solved.is_set(), "without prefetch nothing is solved ahead"
    off.batch(4)
    assert solved.is_set() and where == [threading.main_thread().name] * 2


def test_prefetch_serves_the_same_pairs_and_solves_ahead():
    data = _data()
    on = PairSource(data, from_dict({"ot": {"enabled": True, "pool_batches": 4, "prefetch": True},
                                     "optim": {"batch_size": 8}, "run": {"seed": 3, "steps": 12}}))
    off = PairSource(data, from_dict({"ot": {"enabled": True, "pool_batches": 4, "prefetch": False},
                                      "optim": {"batch_size": 8}, "run": {"seed": 3, "steps": 12}}))
    for step in range(12):
        a, b = on.batch(step), off.batch(step)
        assert all(torch.equal(u, v) for u, v in zip(a[:3], b[:3]))
        assert a[3]["ot/cost_after"] == b[3]["ot/cost_after"]
        assert (a[3]["ot/wait_s"] > 0) == (step % 4 == 0) and a[3]["ot/wait_s"] <= a[3]["ot/solve_s"] + 1.0
        if step % 4 == 0:
            # while pool p trains, pool p+1 is already being solved; none is started past run.steps
            assert (on._ahead is not None and on._ahead[0] == step // 4 + 1) == (step < 8)
            assert off._ahead is None


def _class_projection(coupling: str, tmp_path) -> tuple[dict[int, float], dict[int, int]]:
    """Mean projection of the noise that sOT hands to each MNIST class on that class's direction (mean image of the
    class minus the mean image, unit length), over 4 pools of K=16 x B=32."""
    from ism.training.data import load_dataset
    data = load_dataset(from_dict({"data": {"name": "mnist5k", "resolution": 16}}).data, tmp_path)
    cfg = from_dict({"ot": {"enabled": True, "pool_batches": 16, "coupling": coupling, "prefetch": False},
                     "optim": {"batch_size": 32}})
    src = PairSource(data, cfg)
    x1, y, x0 = (torch.cat(t) for t in zip(*[src.batch(s)[:3] for s in range(64)]))
    mean_all = data.train_x.reshape(len(data.train_x), -1).mean(0)
    proj, count = {}, {}
    for c in range(10):
        u = data.train_x[data.train_y == c].reshape(-1, mean_all.numel()).mean(0) - mean_all
        rows = y == c
        proj[c] = float((x0[rows].reshape(int(rows.sum()), -1) @ (u / u.norm())).mean())
        count[c] = int(rows.sum())
    return proj, count


def test_class_coupling_keeps_each_class_noise_unbiased(tmp_path):
    """Sampling draws noise independently of the label; training must too. Global OT biases each class's noise toward
    its class direction by ~1 sigma; per-class OT leaves it N(0, I) (projection within sampling error of 0)."""
    proj, count = _class_projection("class", tmp_path)
    for c in proj:  # each row's projection is N(0, 1) when unbiased: the mean of n has sd 1/sqrt(n)
        assert abs(proj[c]) < 4.5 / count[c] ** 0.5, (c, proj[c], count[c])
    glob, _ = _class_projection("global", tmp_path)
    assert sum(glob.values()) / len(glob) > 0.5, glob  # the bias the class coupling removes


def test_class_coupling_pairs_within_labels_and_still_transports():
    data = _data(n=96, classes=3)
    cfg = from_dict({"ot": {"enabled": True, "pool_batches": 4, "prefetch": False}, "optim": {"batch_size": 8},
                     "run": {"seed": 3}})
    assert cfg.ot.coupling == "class"
    src, plain = PairSource(data, cfg), PairSource(data, _cfg(False, b=8))
    for step in range(4):
        x1, y, x0, diag = src.batch(step)
        px1, py, px0, _ = plain.batch(step)
        assert torch.equal(x1, px1) and torch.equal(y, py)  # data order and labels untouched
        assert {"ot/cost_before", "ot/cost_after", "ot/batch_cost"} <= set(diag)
    # within the pool, each row's noise came from a row of the same label (a permutation inside each class)
    idx, noise = src._pool_draws(0)
    perm, diag = ot_assign(noise, data.train_x[idx], labels=data.train_y[idx])
    assert torch.equal(data.train_y[idx][perm], data.train_y[idx])
    assert sorted(perm.tolist()) == list(range(len(idx)))
    assert diag["ot/cost_after"] < diag["ot/cost_before"]
    # unconditional runs pair over the whole pool whatever ot.coupling says
    uncond = PairSource(data, from_dict({"ot": {"enabled": True}, "data": {"conditional": False},
                                         "guidance": {"mode": "none"}}))
    assert not uncond.by_class
