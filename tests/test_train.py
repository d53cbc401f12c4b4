"""Training loop: determinism, resume equals uninterrupted, divergence handling, learning on real data."""
import json

import pytest
import torch

from ism.training import checkpoint as ckpt
from ism.system import store
from ism.conf.config import ConfigError, replace, resolve
from ism.training.objective import losses
from ism.training.sample import fixed_labels, fixed_noise, sample
from ism.commands.train import main as train_main
from ism.training.run_state import load_run
from ism.training.train import Diverged, train

FAST = ["run.progress=false", "eval.at_end=false"]


def smoke(tmp_path, *over):
    return resolve("smoke", [], [f"run.out_dir={tmp_path}", *FAST, *over])


def losses_of(run_dir):
    return [json.loads(ln)["loss"] for ln in (run_dir / "stats.jsonl").read_text().splitlines()]


def final_params(run_dir):
    sd = ckpt.load(store.latest_checkpoint(run_dir))
    return sd["model"], sd["ema_infer"]


ALL_ON = ["guidance.mode=intrinsic", "wavelet.enabled=true", "ot.enabled=true", "ot.pool_batches=3", "ema.twin=true"]
# The other methods on the same core: MeanFlow (JVP targets from the fast EMA) and consistency training (its
# discretisation curriculum moves every step of a 10-step run, so a resume must pick up the step's N).
MEANFLOW_ON = ["method.name=meanflow", *ALL_ON]
CT_ON = ["method.name=ct", "guidance.mode=none", "wavelet.enabled=true", "loss.distance=pseudo_huber", "ot.enabled=true",
         "ot.pool_batches=3", "shortcut.target=online"]


@pytest.mark.parametrize("over", [[], ALL_ON], ids=["sm", "ism"])
def test_same_config_and_seed_give_identical_curves(tmp_path, over):
    cfg = smoke(tmp_path, *over)
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    assert losses_of(tmp_path / "a") == losses_of(tmp_path / "b")
    other = replace(cfg, **{"run.seed": 1})
    train(other, tmp_path / "c")
    assert losses_of(tmp_path / "a") != losses_of(tmp_path / "c")


@pytest.mark.parametrize("over", [[], ALL_ON, MEANFLOW_ON, CT_ON], ids=["sm", "ism", "meanflow", "ct"])
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


def test_a_run_stored_before_a_changed_default_is_never_reused(tmp_path):
    # Stored runs cycled their self-consistency levels; the default is now SM's layout. The old run must not be
    # found (nor adopted) under the new default, and must still be found when its old behaviour is asked for.
    from ism.conf import config as C
    old_cfg = smoke(tmp_path, "shortcut.level_allocation=cycle")
    # what the code before the key computed: the same identity without the key
    before_the_key = C._hash({k: v for k, v in C.identity_dict(old_cfg).items() if k != "shortcut.level_allocation"})
    old = train(old_cfg)
    assert old["run_id"] == before_the_key   # so this is the run a store from before the change holds
    new = train(smoke(tmp_path))
    assert new["run_id"] != before_the_key and new.get("resumed_from") in (None, 0)
    assert losses_of(tmp_path / new["run_id"]) != losses_of(tmp_path / old["run_id"])
    assert train(old_cfg) == old   # asked for explicitly, the stored run is the same run


def test_run_dir_of_another_config_is_refused(tmp_path):
    train(smoke(tmp_path), tmp_path / "x")
    with pytest.raises(ConfigError, match="holds a different run"):
        train(smoke(tmp_path, "optim.lr=0.5"), tmp_path / "x")


def test_nan_loss_stops_with_diverged_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real = losses.row_loss
    calls = {"n": 0}

    def poisoned(pred, target, cfg, *rest):
        calls["n"] += 1
        per_row, diag = real(pred, target, cfg, *rest)
        return (per_row * float("nan") if calls["n"] > 5 else per_row), diag

    monkeypatch.setattr("ism.training.train.row_loss", poisoned)
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
    assert set(sd) == {"model", "ema_target", "ema_infer", "optim", "step", "elapsed_s", "pairs", "config", "last_loss"}
    assert sd["last_loss"] == s["final_loss"]  # a run resumed at its end reports it
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


@pytest.mark.e2e
def test_tiny_2d_run_improves_one_step_samples(tmp_path):
    cfg = resolve("toy2d", [], [f"run.out_dir={tmp_path}", *FAST, "run.steps=400", "run.checkpoint_every=400",
                                "guidance.mode=intrinsic", "ema.twin=true"])
    from ism.training.data import load_dataset
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


@pytest.mark.e2e
def test_tiny_mnist_run_lowers_its_loss(tmp_path):
    cfg = smoke(tmp_path, "run.steps=60", "run.log_every=10", "run.checkpoint_every=60")
    train(cfg, tmp_path / "m")
    ls = losses_of(tmp_path / "m")
    assert ls[-1] < 0.8 * ls[0], ls


def test_lr_warms_up_linearly_then_holds(tmp_path):
    cfg = smoke(tmp_path, "run.steps=6", "run.log_every=1", "optim.warmup_steps=4", "optim.lr=0.001")
    train(cfg, tmp_path / "run")
    lrs = [json.loads(ln)["lr"] for ln in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.00025, 0.0005, 0.00075, 0.001, 0.001, 0.001])


def test_grad_clip_bounds_the_update(tmp_path):
    """Adam's first update is ~lr * sign(g) whatever the gradient's scale; a clip far below Adam's eps shrinks it."""
    def moved(*over):
        cfg = smoke(tmp_path, "run.steps=1", "optim.weight_decay=0", *over)
        run = tmp_path / "-".join(over or ("off",))
        train(cfg, run)
        after = ckpt.load(store.latest_checkpoint(run))["model"]  # once: a load per tensor cost 7 s
        return max((after[k] - v).abs().max().item() for k, v in initial.items() if v.is_floating_point())

    from ism.training.data import load_dataset
    from ism.training.run_state import State
    cfg0 = smoke(tmp_path)
    initial = State(cfg0, load_dataset(cfg0.data), torch.device("cpu")).model.state_dict()
    free, clipped = moved(), moved("optim.grad_clip=1e-12")
    assert free == pytest.approx(cfg0.optim.lr, rel=0.05)
    assert clipped < 0.01 * free


@pytest.mark.parametrize("precision, dtype", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_precision_picks_the_autocast_dtype(tmp_path, precision, dtype):
    from ism.training.run_state import resolve_device
    assert resolve_device(smoke(tmp_path, "run.device=cpu", f"run.precision={precision}")) == (torch.device("cpu"), dtype)
    assert resolve_device(smoke(tmp_path, "run.device=cpu", "run.precision=auto")) == (torch.device("cpu"), None)


def test_bf16_autocast_changes_the_computation(tmp_path):
    fp32 = train(smoke(tmp_path, "run.steps=2", "run.precision=fp32"), tmp_path / "fp32")
    bf16 = train(smoke(tmp_path, "run.steps=2", "run.precision=bf16"), tmp_path / "bf16")
    assert torch.isfinite(torch.tensor(bf16["final_loss"])) and bf16["final_loss"] != fp32["final_loss"]


def test_checkpoints_beyond_keep_checkpoints_are_pruned(tmp_path):
    for keep, kept in ((2, [8, 10]), (3, [6, 8, 10])):
        run = tmp_path / f"keep{keep}"
        train(smoke(tmp_path, "run.steps=10", "run.checkpoint_every=2", f"run.keep_checkpoints={keep}"), run)
        assert [s for s, _ in store.list_checkpoints(run)] == kept


def test_adopted_training_is_resumed_at_its_end_and_only_evaluated(tmp_path):
    """A config that differs only in evaluation settings shares the training: adopt_training links the final
    checkpoint and copies the stats, and train() then trains nothing."""
    import os
    from ism.conf.config import run_id, training_id
    from ism.training.train import adopt_training
    donor_cfg = smoke(tmp_path, "run.steps=4")
    other = replace(donor_cfg, **{"eval.w": 1.5})
    assert training_id(other) == training_id(donor_cfg) and run_id(other) != run_id(donor_cfg)
    train(donor_cfg, tmp_path / "donor")
    assert adopt_training(tmp_path / "run", tmp_path / "donor", 4)
    assert not adopt_training(tmp_path / "run", tmp_path / "donor", 4), "adopts once, into an unstarted run dir only"
    got = train(other, tmp_path / "run")
    assert got["resumed_from"] == 4
    assert os.path.samefile(store.checkpoint_path(tmp_path / "run", 4), store.checkpoint_path(tmp_path / "donor", 4))
    assert losses_of(tmp_path / "run") == losses_of(tmp_path / "donor")
    assert json.loads((tmp_path / "run" / "training_from.json").read_text()) == {"run_dir": str(tmp_path / "donor"),
                                                                                 "step": 4}
    assert not adopt_training(tmp_path / "late", tmp_path / "donor", 5), "no checkpoint at that step: nothing adopted"


def test_ism_train_evaluates_every_n_steps_without_an_evaluation_at_the_end(tmp_path):
    """eval.at_end=false with eval.every_steps=N still evaluates during training (the command used to skip it)."""
    run = tmp_path / "run"
    assert train_main(["--preset", "smoke", "--run-dir", str(run), "run.progress=false", "run.steps=4",
                       "eval.at_end=false", "eval.every_steps=2", "eval.steps=[1]", "eval.sweep_steps=[1]",
                       "eval.num_samples=20", "eval.diagnostics=false"]) == 0
    rows = json.loads((run / "eval" / "eval.json").read_text())
    assert {r["train_step"] for r in rows} == {2}
    assert json.loads((run / "summary.json").read_text())["metrics"] == {}
