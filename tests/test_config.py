"""Config: presets, YAML deltas, overrides, strict validation with clear messages (run identity: test_run_identity)."""
import dataclasses
import subprocess
import sys

import pytest
import yaml

from ism.conf import config as C
from ism.cli import main as cli_main


@pytest.mark.parametrize("name", list(C.PRESETS))
def test_every_preset_resolves(name):
    cfg = C.resolve(name)
    assert isinstance(cfg, C.Config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.steps = 3


def test_overrides_and_yaml_deltas(tmp_path):
    f = tmp_path / "delta.yaml"
    f.write_text("preset: smoke\nguidance:\n  mode: intrinsic\noptim:\n  lr: 3.0e-4\n")
    cfg = C.resolve("mnist-cpu", [f], ["optim.lr=1e-3", "eval.steps=[1,4]", "wavelet.level_weights=[1, 2]"])
    assert cfg.model.name == C.PRESETS["smoke"]["model"]["name"]  # the file's preset wins over the argument
    assert cfg.guidance.mode == "intrinsic" and cfg.optim.lr == 1e-3
    assert cfg.eval.steps == (1, 4) and cfg.wavelet.level_weights == (1.0, 2.0)


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=1"], "unknown config key 'optim.lrr'.*Did you mean 'lr'"),
    (["optimm.lr=1"], "unknown config section 'optimm'.*Did you mean 'optim'"),
    (["model.name=dit-zz"], "model.name: 'dit-zz' is not allowed.*Did you mean 'dit-s/2'"),
    (["optim.lr=abc"], "optim.lr: expected a number"),
    (["optim.batch_size=2.5"], "optim.batch_size: expected an integer"),
    (["wavelet.enabled=maybe"], "wavelet.enabled: expected true or false"),
    (["guidance.mode=intrinsik"], "guidance.mode: 'intrinsik' is not allowed.*Did you mean 'intrinsic'"),
    (["optim.lr=0"], "optim.lr: 0.*out of range"),
    (["shortcut.bootstrap_fraction=1.0"], "shortcut.bootstrap_fraction: 1.0 is out of range"),
    (["eval.steps=[3]"], "eval.steps: 3 is not allowed"),
    (["eval.steps=[256]"], "eval.steps: 256 is not allowed"),
    (["data.conditional=false"], "guidance.mode: 'cfg_finest' needs class labels"),
    (["data.name=idx"], "data.path: required"),
    (["wavelet.enabled=true", "wavelet.wavelet=bior1.3"], "not orthogonal"),
    (["wavelet.enabled=true", "wavelet.wavelet=nope"], "not a pywavelets discrete wavelet"),
    (["run.device=tpu"], "run.device"),
    (["optim.lr"], "expected key=value"),
])
def test_bad_input_names_the_key(override, message):
    with pytest.raises(C.ConfigError, match=message):
        C.resolve("mnist-cpu", [], override)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(C.ConfigError, match="unknown preset 'mnist-cp'.*Did you mean 'mnist-cpu'"):
        C.resolve("mnist-cp")
    with pytest.raises(C.ConfigError, match=str(tmp_path / "nope.yaml")):
        C.resolve("mnist-cpu", [tmp_path / "nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(C.ConfigError, match="bad.yaml: expected a mapping"):
        C.resolve("mnist-cpu", [bad])


def test_roundtrip_through_yaml():
    cfg = C.resolve("mnist-cpu", [], ["guidance.mode=intrinsic", "eval.guidance_sweep=[0, 1.5]"])
    assert C.from_dict(yaml.safe_load(C.dump_yaml(cfg))) == cfg


def test_cli_bad_key_exits_2_before_work(capsys):
    assert cli_main(["train", "--dry-run", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "Did you mean 'lr'" in err


def test_cli_dry_run_prints_resolved_config(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ism.cli", "train", "--preset", "smoke", "--dry-run",
                          "guidance.mode=intrinsic", f"run.out_dir={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    body = yaml.safe_load(out.stdout.split("\n", 1)[1])
    assert body["guidance"]["mode"] == "intrinsic" and body["model"]["name"] == C.PRESETS["smoke"]["model"]["name"]
    assert C.run_id(C.from_dict(body)) in out.stdout.splitlines()[0]
    assert not any(tmp_path.iterdir()), "a dry run does no work"


def test_config_reference_doc_is_current():
    from pathlib import Path
    doc = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"
    assert doc.read_text() == C.reference_markdown(), "regenerate: python -m ism.conf.config > docs/config-reference.md"


def test_embedded_preset_keeps_the_purpose_of_its_tuned_defaults():
    """The tuned embedded values must still serve what each component is for: the target EMA is the FAST one (it makes
    self-consistency targets that follow the network; the slow one samples), inference w lies inside the trained w
    range, and SM's CFG samples at the same CFG-equivalent strength as intrinsic guidance (1 + w), so neither
    guidance form is handicapped against the other."""
    from ism.conf.config import from_dict, preset_delta
    cfg = from_dict(preset_delta("mnist-cpu"))
    assert 0 < cfg.ema.target_half_life_steps < cfg.ema.infer_half_life_steps
    assert 0 < cfg.eval.w <= cfg.guidance.w_max
    assert cfg.eval.cfg_scale == cfg.guidance.cfg_scale == 1 + cfg.eval.w
    assert cfg.ot.coupling == "class" and cfg.wavelet.finest_weight >= 1
