"""Reflow coupling: pairs are the teacher's slow-EMA samples from stored noise, deterministic, cached, resumable;
the student trains on them; sOT + reflow is a config error."""
import json

import numpy as np
import pytest
import torch

from ism.conf.config import ConfigError, resolve, run_id
from ism.training.objective.coupling import PairSource
from ism.training.reflow import CHUNK, reflow_pairs
from ism.training.run_state import load_run
from ism.training.sample import default_guidance, sample
from ism.training.train import train

FAST = ["run.progress=false", "eval.at_end=false"]


def smoke(tmp_path, *over):
    return resolve("smoke", [], [f"run.out_dir={tmp_path}", *FAST, *over])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("reflow")
    cfg = smoke(root)
    train(cfg, root / run_id(cfg))
    return root, cfg


def student(root, *over):
    return smoke(root, "data.coupling=reflow", f"data.reflow_teacher={run_id(teacher_cfg(root))}",
                 "data.reflow_steps=4", f"data.reflow_pairs={CHUNK + 40}", *over)


def teacher_cfg(root):
    return smoke(root)


def test_pairs_are_the_teachers_samples_and_cached(teacher):
    root, tcfg = teacher
    cfg = student(root)
    p = reflow_pairs(cfg, root / "student")
    assert p.x0.shape == (CHUNK + 40, 1, 16, 16) and p.path.is_file() and not p.path.with_suffix(".part").exists()
    assert p.path.parent == root / run_id(tcfg) / "reflow"
    _, nets, data, _ = load_run(root / run_id(tcfg))
    want = sample(nets["infer"], p.x0[:8], p.y[:8], 4, tcfg, default_guidance(tcfg), null=data.num_classes)
    torch.testing.assert_close(p.x1[:8], want, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.bincount(p.y), torch.bincount(torch.arange(CHUNK + 40) % data.num_classes))
    # cached: a second call reads the shard (same tensors, no teacher needed)
    q = reflow_pairs(cfg, root / "student")
    assert torch.equal(p.x0, q.x0) and torch.equal(p.x1, q.x1)
    # other settings -> another shard
    other = reflow_pairs(student(root, "data.reflow_steps=2"), root / "student")
    assert other.path != p.path and not torch.allclose(other.x1, p.x1)


def test_interrupted_generation_resumes_to_the_same_shard(teacher):
    root, _ = teacher
    cfg = student(root, "data.reflow_pairs=300")
    full = reflow_pairs(cfg, root / "s")
    # simulate an interruption after the first chunk: the shard gone, chunk 0 kept (poisoned to prove it is reused)
    part = full.path.with_suffix(".part")
    part.mkdir()
    x1 = full.x1[:CHUNK].numpy().copy()
    x1[0, 0, 0, 0] = 123.0
    np.savez(part / "chunk-00000.npz", x0=full.x0[:CHUNK].numpy(), x1=x1)
    full.path.unlink()
    again = reflow_pairs(cfg, root / "s")
    assert float(again.x1[0, 0, 0, 0]) == 123.0            # chunk 0 was not recomputed
    torch.testing.assert_close(again.x1[CHUNK:], full.x1[CHUNK:])  # the rest regenerated identically
    assert torch.equal(again.x0, full.x0)


def test_student_trains_on_the_fixed_pairs(teacher, tmp_path):
    root, _ = teacher
    cfg = student(root)
    p = reflow_pairs(cfg, root / "x")
    from ism.training.data import load_dataset
    src = PairSource(load_dataset(cfg.data), cfg, fixed=(p.x0, p.x1, p.y))
    x1, y, x0, diag = src.batch(3)
    idx = src.data_indices(3)
    assert torch.equal(x0, p.x0[idx]) and torch.equal(x1, p.x1[idx]) and torch.equal(y, p.y[idx])
    # the pairing cost of teacher pairs is far below independent noise-data pairs
    ind = PairSource(load_dataset(cfg.data), smoke(root))
    assert diag["ot/batch_cost"] < 0.9 * ind.batch(3)[3]["ot/batch_cost"]
    run = tmp_path / "student"
    summary = train(cfg, run)
    assert summary["steps"] == cfg.run.steps
    stats = [json.loads(ln) for ln in (run / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["ot/batch_cost"] < 0.9 * ind.batch(cfg.run.steps - 1)[3]["ot/batch_cost"]


def test_reflow_config_errors(teacher, tmp_path):
    root, _ = teacher
    with pytest.raises(ConfigError, match="sOT has nothing to re-pair"):
        student(root, "ot.enabled=true")
    with pytest.raises(ConfigError, match="data.reflow_teacher: required"):
        smoke(root, "data.coupling=reflow")
    with pytest.raises(ConfigError, match="data.reflow_steps"):
        student(root, "data.reflow_steps=3")
    with pytest.raises(ConfigError, match="not a run directory"):
        train(smoke(tmp_path, "data.coupling=reflow", "data.reflow_teacher=nope"), tmp_path / "r")
    with pytest.raises(ConfigError, match="only resolves inside an ablation spec"):
        train(smoke(tmp_path, "data.coupling=reflow", "data.reflow_teacher=variant:sm"), tmp_path / "r2")
