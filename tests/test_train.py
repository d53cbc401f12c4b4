"""Training loop: determinism, resume equals uninterrupted, divergence handling, learning on real data."""
import json

import pytest
import torch

from ism import checkpoint as ckpt
from ism import store
from ism.config import ConfigError, replace, resolve
from ism.objective import losses
from ism.sample import fixed_labels, fixed_noise, sample
from ism.commands.train import main as train_main
from ism.run_state import load_run
from ism.train import Diverged, train

FAST = ["run.progress=false", "eval.at_end=false"]


def smoke(tmp_path, *over):
    return resolve("smoke", [], [f"run.out_dir={tmp_path}", *FAST, *over])


def losses_of(run_dir):
    return [json.loads(ln)["loss"] for ln in (run_dir / "stats.jsonl").read_text().splitlines()]


def final_params(run_dir):
    sd = ckpt.load(store.latest_checkpoint(run_dir))
    return sd["model"], sd["ema_infer"]


ALL_ON = ["guidance.mode=intrinsic", "wavelet.enabled=true", "ot.enabled=true", "ot.pool_batches=3", "ema.twin=true"]


@pytest.mark.parametrize("over", [[], ALL_ON], ids=["sm", "ism"])
def test_same_config_and_seed_give_identical_curves(tmp_path, over):
    cfg = smoke(tmp_path, *over)
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    assert losses_of(tmp_path / "a") == losses_of(tmp_path / "b")
    other = replace(cfg, **{"run.seed": 1})
    train(other, tmp_path / "c")
    assert losses_of(tmp_path / "a") != losses_of(tmp_path / "c")


@pytest.mark.parametrize("over", [[], ALL_ON], ids=["sm", "ism"])
def test_resume_after_crash_ends_where_uninterrupted_run_ends(tmp_path, monkeypatch, over):
    cfg = smoke(tmp_path, "run.steps=10", "run.checkpoint_every=4", "run.log_every=1", *over)
    ref = train(cfg, tmp_path / "ref")
    with pytest.raises(RuntimeError, match="injected crash at step 6"):  # mid sOT pool (pools of 3), after ckpt 4
        train(cfg, tmp_path / "res", crash_at_step=6)
    assert [s for s, _ in store.list_checkpoints(tmp_path / "res")] == [4]
    got = train(cfg, tmp_path / "res", crash_at_step=6)  # the rerun resumes from step 4, past the crash once
    assert got["resumed_from"] == 4
    assert losses_of(tmp_path / "ref") == losses_of(tmp_path / "res")
    (ma, ea), (mb, eb) = final_params(tmp_path / "ref"), final_params(tmp_path / "res")
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    def same(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return torch.equal(a, b) if torch.is_tensor(a) else a == b
    assert same(ea, eb)
    assert got["final_loss"] == ref["final_loss"]


def test_finished_run_is_not_retrained(tmp_path):
    cfg = smoke(tmp_path)
    first = train(cfg)
    mtime = store.latest_checkpoint(tmp_path / first["run_id"]).stat().st_mtime
    again = train(cfg)
    assert again == first and store.latest_checkpoint(tmp_path / first["run_id"]).stat().st_mtime == mtime


def test_run_dir_of_another_config_is_refused(tmp_path):
    train(smoke(tmp_path), tmp_path / "x")
    with pytest.raises(ConfigError, match="holds a different run"):
        train(smoke(tmp_path, "optim.lr=0.5"), tmp_path / "x")


def test_nan_loss_stops_with_diverged_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real = losses.row_loss
    calls = {"n": 0}

    def poisoned(pred, target, cfg):
        calls["n"] += 1
        per_row, diag = real(pred, target, cfg)
        return (per_row * float("nan") if calls["n"] > 5 else per_row), diag

    monkeypatch.setattr("ism.train.row_loss", poisoned)
    cfg = smoke(tmp_path, "run.checkpoint_every=2")
    with pytest.raises(Diverged, match="diverged at step 5"):
        train(cfg, tmp_path / "run")
    assert [s for s, _ in store.list_checkpoints(tmp_path / "run")] == [2, 4]
    assert not (tmp_path / "run" / "summary.json").exists()
    sd = ckpt.load(store.latest_checkpoint(tmp_path / "run"))
    assert all(torch.isfinite(v).all() for v in sd["model"].values())
    calls["n"] = 0
    assert train_main(["--preset", "smoke", f"run.out_dir={tmp_path / 'cli'}", "run.progress=false", "--no-eval"]) == 1
    assert "diverged at step 5" in capsys.readouterr().err


def test_checkpoints_load_weights_only_and_hold_everything(tmp_path):
    cfg = smoke(tmp_path, *ALL_ON)
    s = train(cfg)
    path = store.latest_checkpoint(tmp_path / s["run_id"])
    sd = torch.load(path, weights_only=True)
    assert set(sd) == {"model", "ema_target", "ema_infer", "optim", "step", "elapsed_s", "pairs", "config"}
    assert sd["step"] == cfg.run.steps and not list(path.parent.glob("*.tmp*"))
    loaded_cfg, nets, data, step = load_run(tmp_path / s["run_id"])
    assert loaded_cfg == cfg and step == cfg.run.steps and set(nets) == {"online", "target", "infer"}
    assert nets["target"] is not nets["infer"]
    # a checkpoint file loads the same run at that checkpoint's step
    file_cfg, file_nets, _, file_step = load_run(path)
    assert file_cfg == cfg and file_step == step
    for role in nets:
        for (k, a), b in zip(nets[role].state_dict().items(), file_nets[role].state_dict().values()):
            assert torch.equal(a, b), (role, k)


def test_stats_and_callback_events(tmp_path):
    events = []
    cfg = smoke(tmp_path, *ALL_ON)
    train(cfg, tmp_path / "r", callback=lambda kind, p: events.append((kind, p)))
    kinds = [k for k, _ in events]
    assert kinds.count("metrics") == cfg.run.steps // cfg.run.log_every and kinds[-1] == "done"
    assert "checkpoint" in kinds
    m = next(p for k, p in events if k == "metrics")["metrics"]
    for key in ("loss", "loss_fm", "loss_sc", "loss_guid", "sec_per_step", "peak_mem_mb", "ot/cost_before", "ot/cost_after"):
        assert key in m, key
    assert m["ot/cost_after"] <= m["ot/cost_before"]
    assert any(k.startswith("wavelet/") for k in m)
    line = json.loads((tmp_path / "r" / "stats.jsonl").read_text().splitlines()[0])
    assert {"step", "time", "loss", "sec_per_step", "peak_mem_mb"} <= set(line)


def energy_distance(a, b):
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def class_energy_distance(x, y, ref_x, ref_y):
    """Mean over classes of the energy distance between class-c samples and class-c data."""
    return sum(energy_distance(x[y == c], ref_x[ref_y == c]) for c in ref_y.unique().tolist()) / len(ref_y.unique())


@pytest.mark.slow
def test_tiny_2d_run_improves_one_step_samples(tmp_path):
    cfg = resolve("toy2d", [], [f"run.out_dir={tmp_path}", *FAST, "run.steps=400", "run.checkpoint_every=400",
                                "guidance.mode=intrinsic", "ema.twin=true"])
    from ism.data import load_dataset
    data = load_dataset(cfg.data)
    ref_x, ref_y = data.test_x, data.test_y
    x0 = fixed_noise(2000, data.shape, 0)
    y = fixed_labels(2000, data.num_classes)
    init_cfg = replace(cfg, **{"run.steps": 0})
    train(init_cfg, tmp_path / "init")
    _, nets0, _, _ = load_run(tmp_path / "init")
    before = class_energy_distance(sample(nets0["infer"], x0, y, 1, cfg, 0.0), y, ref_x, ref_y)
    train(cfg, tmp_path / "trained")
    _, nets, _, _ = load_run(tmp_path / "trained")
    after = class_energy_distance(sample(nets["infer"], x0, y, 1, cfg, 0.0), y, ref_x, ref_y)
    assert after < 0.3 * before, (before, after)


@pytest.mark.slow
def test_tiny_mnist_run_lowers_its_loss(tmp_path):
    cfg = smoke(tmp_path, "run.steps=60", "run.log_every=10", "run.checkpoint_every=60")
    train(cfg, tmp_path / "m")
    ls = losses_of(tmp_path / "m")
    assert ls[-1] < 0.8 * ls[0], ls
