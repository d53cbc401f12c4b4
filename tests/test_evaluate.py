"""Evaluation: FID/KID sanity, reference-statistics cache, the evaluator on real (untrained and trained) nets, CLI."""
import dataclasses
import json
import math
import os

import pandas as pd
import pytest
import torch

from ism.evaluation import diagnostics as D
from ism.evaluation import evaluate as EV
from ism.evaluation import scorers as SC
from ism.training import extractors as E
from ism.cli import main as cli
from ism.conf.config import resolve
from ism.training.data import load_dataset
from ism.training.models import build_model


@pytest.fixture(scope="module")
def smoke():
    torch.set_num_threads(1)
    cfg = resolve("smoke")
    return cfg, load_dataset(cfg.data)


@pytest.fixture(scope="module")
def cnn(smoke, shared_cache):
    return E.setup("mnist-cnn", smoke[1], root=shared_cache)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(smoke, cnn, tmp_path):
    _, data = smoke
    ref = SC.reference(data, cnn)
    self_m = SC.fid_kid(data.test_x, ref, cnn, tmp_path)
    assert abs(self_m["fid"]) < 1e-6
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(data.test_x.shape, generator=g)
    noisy = [SC.fid_kid(data.test_x + s * noise, ref, cnn, tmp_path) for s in (0.1, 0.3, 0.6, 1.0)]
    fids, kids = [m["fid"] for m in noisy], [m["kid"] for m in noisy]
    assert 0.1 < fids[0] < fids[1] < fids[2] < fids[3], fids
    assert kids[0] < kids[1] < kids[2] < kids[3], kids
    # Unbiased KID of identical sets is ~0 (slightly negative: the diagonal is left out of XX and YY only).
    assert abs(self_m["kid"]) < 0.05 * kids[1]


def test_reference_stats_are_cached_and_invalidated_when_data_change(smoke, cnn, tmp_path):
    _, data = smoke
    ref = SC.reference(data, cnn)
    first = SC.fid_kid(data.test_x[:100], ref, cnn, tmp_path)
    assert ref.images.reads >= len(data.test_x)          # features of the held-out split computed
    files = sorted(tmp_path.glob(f"{ref.cache_name}-*.pt"))
    assert [f.name for f in files] == [f"{ref.cache_name}-mnist-cnn-features-128.pt",
                                       f"{ref.cache_name}-mnist-cnn-stat-fid-128.pt"]
    mtimes = [os.path.getmtime(f) for f in files]
    again = SC.fid_kid(data.test_x[:100], SC.reference(data, cnn), cnn, tmp_path)
    fresh = SC.reference(data, cnn)
    SC.fid_kid(data.test_x[:100], fresh, cnn, tmp_path)
    assert fresh.images.reads == 0                        # second and third calls: nothing recomputed
    assert [os.path.getmtime(f) for f in files] == mtimes
    assert again["fid"] == pytest.approx(first["fid"])
    # Changed data (new fingerprint): new hash, recomputed statistics, different value.
    changed = dataclasses.replace(data, test_x=data.test_x.flip(-1), fingerprint="0" * 64)
    ref2 = SC.reference(changed, cnn)
    assert ref2.ref_hash != ref.ref_hash
    other = SC.fid_kid(data.test_x[:100], ref2, cnn, tmp_path)
    assert ref2.images.reads >= len(data.test_x) and other["fid"] != pytest.approx(first["fid"])
    # The key also covers the extractor and its weights.
    assert SC.reference(data, dataclasses.replace(cnn, key="mnist-cnn:other")).ref_hash != ref.ref_hash


def _small(preset, **over):
    base = {"eval.num_samples": 120, "eval.steps": [1, 2, 8], "eval.sweep_steps": [1, 8], "shortcut.max_steps_log2": 3,
            "eval.batch_size": 64}
    cfg = resolve(preset, overrides={**base, **over})
    return cfg, load_dataset(cfg.data)


def test_evaluator_on_an_image_model_writes_the_table(shared_cache, tmp_path):
    cfg, data = _small("smoke", **{"eval.guidance_sweep": [1.0, 3.0], "eval.sweep_steps": [1, 8]})
    torch.manual_seed(0)
    net = build_model(cfg, data)
    for p in net.parameters():      # zero-initialised output layers: perturb so samples depend on steps/guidance
        p.data.add_(0.05 * torch.randn_like(p))
    ev = EV.make_evaluator(cfg, cache_root=shared_cache)
    rows, metrics = ev({"infer": net}, cfg, data, 7, tmp_path)
    df = pd.read_csv(tmp_path / "eval" / "eval.csv")
    assert list(df.columns) == list(EV.FIELDS) and len(df) == len(rows)
    assert set(df.metric) >= {"fid", "kid", "kid_std", "spectrum_top_err", "straightness", "pairing_cost", "sc_gap",
                              "effective_guidance"}
    assert (df.train_step == 7).all() and (df.n == 120).all() and (df.extractor == "mnist-cnn").all()
    assert df.ref_hash.nunique() == 1 and df.extractor_accuracy.iloc[0] == pytest.approx(metrics["extractor_accuracy"])
    for s in (1, 2, 8):
        assert metrics[f"fid_steps_{s}"] > 0 and f"kid_steps_{s}" in metrics
    assert {"fid_steps_1_w_1", "fid_steps_8_w_3", "sc_gap_steps_1", "effective_guidance_steps_1",
            "guidance_ruler_steps_8_w_1", "guidance_ruler_steps_8_w_3", "effective_guidance_bound_steps_8"} <= set(metrics)
    # the ruler is calibrated on the sweep's 8-step CFG samples (scales 1 and 3): readings lie inside or at its ends
    assert all(1.0 <= metrics[f"effective_guidance_steps_{s}"] <= 3.0 for s in (1, 2, 8))
    sweep = df[(df.metric == "fid") & (df.guidance == 3.0)]
    assert sorted(sweep.steps) == [1, 8]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["grid_steps_1_train_00000007.png",
                                                                       "grid_steps_4_train_00000007.png"]
    # Re-evaluating a step replaces its rows; another step adds rows.
    EV.write_table(tmp_path, rows)
    EV.write_table(tmp_path, [dict(r, train_step=9) for r in rows])
    table = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert len(table) == 2 * len(rows) and {r["train_step"] for r in table} == {7, 9}


def test_evaluator_on_points_uses_energy_distance(tmp_path):
    cfg, data = _small("toy2d", **{"eval.num_samples": 200})
    torch.manual_seed(0)
    net = build_model(cfg, data)
    rows, metrics = EV.evaluate_run({"infer": net}, cfg, data, 0, tmp_path, tmp_path / "cache")
    kinds = {r["metric"] for r in rows}
    assert {"energy_distance", "sliced_wasserstein", "straightness", "sc_gap", "effective_guidance",
            "guidance_stat", "guidance_ruler"} <= kinds
    assert "fid" not in kinds and all(r["extractor"] == "points" for r in rows)
    # An untrained net (zero output layer) returns its noise, N(0, I): 10x farther from the 8 Gaussians (unit
    # variance overall) than 200 real training points are.
    idx = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))[:200]
    real = D.energy_distance(data.train_x[idx], data.test_x)
    assert metrics["energy_distance_steps_1"] > 5 * real
    assert (tmp_path / "samples" / "grid_steps_1_train_00000000.png").is_file()


class Velocity(torch.nn.Module):
    """Unit speed along (cos(pi * turn * t), sin(pi * turn * t)): an Euler path of N steps is a polyline of length
    1; turn=0 is a straight path."""

    def __init__(self, turn: float):
        super().__init__()
        self.turn = turn
        self.p = torch.nn.Parameter(torch.zeros(1))  # the evaluator reads the device from the parameters

    def forward(self, x, t, k, y, w):
        a = math.pi * self.turn * t
        return torch.stack([torch.cos(a), torch.sin(a)], dim=1) + 0 * x


@pytest.mark.parametrize("turn", [0.0, 1.0])
def test_straightness_is_path_length_over_chord(tmp_path, turn):
    steps = 8
    cfg, data = _small("toy2d", **{"eval.num_samples": 16, "eval.steps": [steps], "eval.sweep_steps": [1],
                                   "guidance.mode": "none", "data.conditional": False})
    _, metrics = EV.evaluate_run({"infer": Velocity(turn)}, cfg, data, 0, tmp_path, tmp_path / "cache")
    a = math.pi * turn * torch.arange(steps) / steps
    chord = float(torch.stack([torch.cos(a), torch.sin(a)], 1).sum(0).norm()) / steps   # path length is 1
    assert metrics[f"straightness_steps_{steps}"] == pytest.approx(1.0 / chord, rel=1e-6)
    assert (turn == 0) == (metrics[f"straightness_steps_{steps}"] == pytest.approx(1.0))


def test_cli_rejects_bad_step_counts(capsys):
    assert cli(["eval", "nowhere", "--steps", "1,x"]) == 2
    assert "integers" in capsys.readouterr().err
    assert cli(["eval", "nowhere", "--steps", "1,2"]) == 2     # no such run
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.e2e
def test_train_then_ism_eval_end_to_end(shared_cache, tmp_path, monkeypatch, capsys):
    from ism.training.train import train
    monkeypatch.setenv("ISM_CACHE", str(shared_cache))
    cfg = resolve("smoke", overrides={"run.progress": False, "eval.steps": [1, 128]})
    events = []
    summary = train(cfg, tmp_path / "run", callback=lambda kind, payload: events.append((kind, payload)),
                    evaluator=EV.make_evaluator(cfg, shared_cache))
    ev = [p for k, p in events if k == "eval"]
    assert ev and "fid_steps_1" in ev[-1]["metrics"] and summary["metrics"]["fid_steps_128"] > 0
    assert cli(["eval", str(tmp_path / "run"), "--steps", "1,2", "--num-samples", "32", "--no-diagnostics"]) == 0
    assert "fid_steps_2" in capsys.readouterr().out
    df = pd.read_csv(tmp_path / "run" / "eval" / "eval.csv")
    assert set(df[df.metric == "fid"].steps) == {1, 2, 128}
    assert cli(["eval", str(tmp_path / "run"), "--steps", "3"]) == 2
    assert "powers of two" in capsys.readouterr().err
    assert cli(["eval", str(tmp_path / "run"), "--steps", "256"]) == 2


# ----------------------------------------------------------------------------------------------- held-out selection
class _Points:
    kind = "points"


def test_guidance_is_selected_on_held_out_noise_and_reported_on_the_evaluation_noise():
    # A score whose best value differs between the two noise sets: on the held-out set w = 2 wins, on the
    # evaluation set w = 1 would. Selecting on the reported noise (the flattering choice) would pick 1.
    cfg = resolve("toy2d", overrides={"guidance.mode": "intrinsic", "eval.guidance_sweep": [0.0, 1.0, 2.0, 3.0],
                                      "eval.sweep_steps": [1, 4], "eval.select_guidance": True, "eval.w": 0.0})
    best_on = {EV.SELECT_SEED: 2.0, EV.EVAL_SEED: 1.0}
    calls = []

    def sample(w, s, seed=EV.EVAL_SEED):
        calls.append((w, s, seed))
        return torch.tensor([[w, float(seed)]] * 4)

    def score(x):
        w, seed = float(x[0, 0]), int(x[0, 1])
        return abs(w - best_on[seed]) + 0.5

    rows = EV.selected_guidance_rows(None, cfg, _Points(), sample, score, {1: 99.0, 4: 99.0}, "energy_distance")
    picked = {r["steps"]: r for r in rows if r["metric"] == "energy_distance_selected"}
    assert {s: r["guidance"] for s, r in picked.items()} == {1: 2.0, 4: 2.0}
    assert {s: r["value"] for s, r in picked.items()} == {1: 1.5, 4: 1.5}   # |2 - 1| + 0.5 on the evaluation noise
    assert {r["value"] for r in rows if r["metric"] == "selected_guidance"} == {3.0}   # CFG-equivalent 1 + w
    assert all(seed == EV.SELECT_SEED for w, s, seed in calls[:4])
    disp = {(r["steps"], r["guidance"]): r["value"] for r in rows if r["metric"] == "guidance_displacement"}
    assert disp[(1, 0.0)] == 0.0 and disp[(1, 3.0)] == pytest.approx(3.0 * math.sqrt(1))  # |(w, s) - (0, s)|


def test_selection_reuses_the_main_score_when_the_run_value_wins():
    cfg = resolve("toy2d", overrides={"guidance.mode": "intrinsic", "eval.guidance_sweep": [0.0, 1.0],
                                      "eval.sweep_steps": [1], "eval.select_guidance": True, "eval.w": 1.0})
    rows = EV.selected_guidance_rows(None, cfg, _Points(), lambda w, s, seed=0: torch.full((4, 2), w),
                                     lambda x: 1.0 - float(x[0, 0]), {1: 42.0}, "energy_distance")
    assert [r["value"] for r in rows if r["metric"] == "energy_distance_selected"] == [42.0]


def test_selected_guidance_on_an_intrinsic_image_model(shared_cache, tmp_path):
    cfg, data = _small("smoke", **{"guidance.mode": "intrinsic", "eval.guidance_sweep": [0.0, 1.0, 2.0],
                                   "eval.sweep_steps": [1, 8], "eval.select_guidance": True, "eval.diagnostics": False})
    torch.manual_seed(0)
    net = build_model(cfg, data)
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    _, metrics = EV.evaluate_run({"infer": net}, cfg, data, 3, tmp_path, shared_cache)
    for s in (1, 8):
        assert metrics[f"selected_guidance_steps_{s}"] in (1.0, 2.0, 3.0)
        assert metrics[f"fid_selected_steps_{s}"] > 0
        assert metrics[f"guidance_displacement_steps_{s}_w_0"] == 0.0
        assert metrics[f"guidance_displacement_steps_{s}_w_2"] > metrics[f"guidance_displacement_steps_{s}_w_1"] > 0
    # two-pass CFG at the same CFG-equivalent scale, at 2^K steps only (where the null class is trained)
    assert {"cfg_displacement_steps_8_w_1", "cfg_displacement_steps_8_w_2"} <= set(metrics)
    assert "cfg_displacement_steps_1_w_1" not in metrics
