"""Euler shortcut sampler: step-count rules, forward passes per step, guidance at inference, grids."""
import pytest
import torch

from ism.conf.config import ConfigError, resolve
from ism.commands.sample import main as sample_main
from ism.training.sample import fixed_labels, fixed_noise, sample
from ism.training.train import train


class Recorder(torch.nn.Module):
    """Velocity 1 everywhere; records the inputs of every forward pass."""

    num_classes = 4

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, k, y, w):
        self.calls.append({"n": x.shape[0], "t": t.clone(), "k": k.clone(), "y": y.clone(), "w": w.clone()})
        return torch.ones_like(x) + (y == self.num_classes).float()[:, None]


@pytest.mark.parametrize("n", [0, 3, 6, 256])
def test_step_counts_must_be_powers_of_two_up_to_128(n):
    cfg = resolve("toy2d")
    with pytest.raises(ConfigError, match=f"steps: {n} is not allowed"):
        sample(Recorder(), torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), n, cfg)


@pytest.mark.parametrize("n", [1, 2, 4, 128])
def test_euler_steps_levels_and_times(n):
    cfg = resolve("toy2d", [], ["guidance.mode=none"])
    net = Recorder()
    x = sample(net, torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), n, cfg)
    torch.testing.assert_close(x, torch.ones(3, 2))  # integrating velocity 1 from 0 over [0, 1]
    assert len(net.calls) == n
    assert all(int(c["k"][0]) == n.bit_length() - 1 for c in net.calls)
    torch.testing.assert_close(torch.stack([c["t"][0] for c in net.calls]), torch.arange(n) / n)


def test_intrinsic_guidance_is_one_pass_per_step_with_interval():
    cfg = resolve("toy2d", [], ["guidance.mode=intrinsic", "guidance.t_interval=0.3"])
    net = Recorder()
    sample(net, torch.zeros(5, 2), torch.zeros(5, dtype=torch.long), 8, cfg, 2.0)
    assert len(net.calls) == 8 and all(c["n"] == 5 for c in net.calls)
    ws = [float(c["w"][0]) for c in net.calls]
    # steps [0, .125) and [.125, .25) lie wholly below t_interval = 0.3: w = 0; [.25, .375) straddles it: keeps w
    assert ws == [0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    net1 = Recorder()
    sample(net1, torch.zeros(5, 2), torch.zeros(5, dtype=torch.long), 1, cfg, 2.0)
    assert float(net1.calls[0]["w"][0]) == 2.0


def test_interval_at_inference_off_keeps_w_on_every_step():
    cfg = resolve("toy2d", [], ["guidance.mode=intrinsic", "guidance.t_interval=0.3", "guidance.interval_at_inference=false"])
    net = Recorder()
    sample(net, torch.zeros(5, 2), torch.zeros(5, dtype=torch.long), 8, cfg, 2.0)
    assert [float(c["w"][0]) for c in net.calls] == [2.0] * 8


@pytest.mark.parametrize("mode, key", [("intrinsic", "eval.w"), ("cfg_finest", "eval.cfg_scale"),
                                       ("cfg_every_level", "eval.cfg_scale"), ("none", None)])
def test_ism_eval_guidance_sets_the_key_of_the_runs_mode(mode, key):
    import argparse
    from ism.commands.eval import overrides
    over = ["data.conditional=false"] if mode == "none" else []
    cfg = resolve("toy2d", [], [f"guidance.mode={mode}", *over])
    args = argparse.Namespace(steps=None, num_samples=None, extractor=None, weights_path=None, no_diagnostics=False,
                              sweep=None, guidance=2.5)
    assert overrides(args, cfg) == ({key: 2.5} if key else {})


def test_cfg_applies_only_at_the_finest_level_with_two_passes():
    cfg = resolve("toy2d", [], ["guidance.mode=cfg_finest"])
    net = Recorder()
    x = sample(net, torch.zeros(2, 2), torch.ones(2, dtype=torch.long), 128, cfg, 3.0, null=Recorder.num_classes)
    assert all(c["n"] == 4 for c in net.calls)  # cond + null in one batched pass
    assert all(torch.equal(c["y"][2:], torch.full((2,), 4)) for c in net.calls)
    # v = v_null + 3 (v_c - v_null) = 2 + 3 (1 - 2) = -1 per unit time
    torch.testing.assert_close(x, -torch.ones(2, 2))
    net4 = Recorder()
    sample(net4, torch.zeros(2, 2), torch.ones(2, dtype=torch.long), 4, cfg, 3.0, null=Recorder.num_classes)
    assert all(c["n"] == 2 for c in net4.calls)  # guidance is baked in below the finest level


def test_fixed_noise_and_labels_are_reproducible():
    assert torch.equal(fixed_noise(8, (1, 4, 4), 3), fixed_noise(8, (1, 4, 4), 3))
    assert not torch.equal(fixed_noise(8, (1, 4, 4), 3), fixed_noise(8, (1, 4, 4), 4))
    assert fixed_labels(12, 10).tolist() == list(range(10)) + [0, 1]


def test_sample_cli_writes_png_grids(tmp_path):
    cfg = resolve("smoke", [], [f"run.out_dir={tmp_path}", "run.progress=false", "eval.at_end=false"])
    s = train(cfg)
    run = tmp_path / s["run_id"]
    assert sample_main([str(run), "--steps", "1,128", "--per-class", "2"]) == 0
    pngs = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert pngs == [f"grid_steps_128_infer_step{cfg.run.steps}.png", f"grid_steps_1_infer_step{cfg.run.steps}.png"]
    from PIL import Image
    img = Image.open(run / "samples" / pngs[0])
    assert img.size[0] > 16 * 2 and img.size[1] > 16 * 10
    with pytest.raises(ConfigError, match="--steps: 5 is not allowed"):
        sample_main([str(run), "--steps", "5"])


@pytest.mark.parametrize("mode, scales", [("cfg_finest", (1.5, 3.0)), ("cfg_every_level", (1.5, 3.0)),
                                          ("intrinsic", (0.5, 2.0)), ("none", (1.5, 3.0))])
def test_equal_guidance_effects_give_equal_samples_and_different_ones_differ(mode, scales):
    """guidance_effect is what lets evaluation reuse samples: checked against sample() itself on a real network."""
    from ism.training.data import load_dataset
    from ism.training.models import build_model
    from ism.training.sample import guidance_effect
    cfg = resolve("toy2d", overrides={"guidance.mode": mode, "shortcut.max_steps_log2": 3, "eval.steps": [1, 4, 8],
                                      "eval.sweep_steps": [1, 8], "data.conditional": mode != "none"})
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    net = build_model(cfg, data).eval()
    for p in net.parameters():  # zero-initialised output layers: perturb so samples depend on the guidance
        p.data.add_(0.1 * torch.randn_like(p))
    x0, y = fixed_noise(32, data.shape, 0), fixed_labels(32, data.num_classes)
    if mode == "none":
        y = torch.full((32,), data.num_classes)
    for steps in (1, 4, 8):
        a, b = (sample(net, x0, y, steps, cfg, g, null=data.num_classes) for g in scales)
        same = guidance_effect(cfg, steps, scales[0]) == guidance_effect(cfg, steps, scales[1])
        assert torch.equal(a, b) == same, (mode, steps)
        assert same == (mode == "none" or mode.startswith("cfg") and steps < 8)


def test_a_guidance_sweep_reuses_samples_it_already_drew_with_the_same_scores(tmp_path):
    """The sweep at the run's own guidance, and CFG scales below 2^K steps, reuse drawn samples: fewer forward
    passes, and every sweep score equals a fresh draw's."""
    from ism.evaluation import diagnostics as D
    from ism.evaluation import evaluate as EV
    from ism.training.data import load_dataset
    from ism.conf.metric_keys import key
    from ism.training.models import build_model
    cfg = resolve("toy2d", overrides={"guidance.mode": "cfg_finest", "eval.cfg_scale": 1.5, "shortcut.max_steps_log2": 3,
                                      "eval.steps": [1, 2, 8], "eval.sweep_steps": [1, 8], "eval.num_samples": 64,
                                      "eval.guidance_sweep": [1.0, 1.5, 3.0], "eval.diagnostics": False})
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    net = build_model(cfg, data)
    for p in net.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    rows = []
    net.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    _, metrics = EV.evaluate_run({"infer": net}, cfg, data, 0, tmp_path, tmp_path / "cache")
    main = 64 * (1 + 2 + 2 * 8)  # the run's own steps (CFG: two passes at 2^K)
    sweep = 64 * (8 + 2 * 8)  # only scales 1.0 (one pass) and 3.0 at 8 steps are new
    grid = 64 * 4  # the 4-step sample grid (not an evaluated step count)
    assert sum(rows) == main + sweep + grid
    for w in (1.0, 1.5, 3.0):
        for s in (1, 8):
            fresh = EV.generate(net, cfg, data, 64, s, w)[1]
            assert metrics[key("energy_distance", s, w)] == D.energy_distance(fresh, data.test_x)
