"""Reflow pairs (rectified flow, Liu, Gong, Liu 2022): noise x0 and the teacher's ODE sample x1 from it.

A run with data.coupling=reflow trains on these fixed pairs instead of (fresh noise, data image): the teacher's
slow (inference) EMA integrates each x0 in data.reflow_steps shortcut steps with the teacher's own inference
guidance and labels balanced over the classes; the student then learns the teacher's (straighter) coupling.

The pairs are a dataset shard in the teacher's run dir, `reflow/pairs-<key>.npz`, key = the teacher's run id and
training step + the reflow settings (so students of one teacher share it). Generation is deterministic (noise of
chunk c from (key, c)), written chunk by chunk atomically into `reflow/pairs-<key>.part/`, so an interrupted run
resumes at the first missing chunk; the shard is assembled last (atomically) and the chunks removed. Concurrent
students of one teacher compute identical chunks, so their atomic writes race harmlessly.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ism.system import store
from ism.conf.config import Config, ConfigError, from_dict, load_yaml, run_id
from ism.training.rng import generator
from ism.training.sample import default_guidance, fixed_labels, sample

CHUNK = 256          # pairs per resumable chunk (one sampler batch)
VERSION = 1          # bump when generation changes so stale shards are never read


@dataclass(frozen=True, eq=False)
class Pairs:
    x0: torch.Tensor     # noise [N, *shape]
    x1: torch.Tensor     # the teacher's samples
    y: torch.Tensor      # labels the teacher was conditioned on
    key: str
    path: Path


def teacher_dir(cfg: Config, run_dir: str | Path | None) -> Path:
    """The teacher's run directory: data.reflow_teacher as a path, else as a run id next to run_dir or in out_dir."""
    t = cfg.data.reflow_teacher
    if t.startswith("variant:"):
        raise ConfigError(f"data.reflow_teacher: {t!r} names a spec variant; that only resolves inside an ablation "
                          "spec (ism ablate); give a run directory or run id here")
    cands = [Path(t)] + ([Path(run_dir).parent / t] if run_dir else []) + [Path(cfg.run.out_dir) / t]
    for c in cands:
        if (c / "config.yaml").is_file():
            return c
    raise ConfigError(f"data.reflow_teacher: {t!r} is not a run directory (looked at {', '.join(map(str, cands))}); "
                      "train the teacher first")


def pair_key(teacher_rid: str, teacher_step: int, cfg: Config) -> str:
    """Cache key of a shard: teacher run id and step + the reflow settings."""
    d = cfg.data
    return hashlib.sha256(json.dumps([teacher_rid, teacher_step, d.reflow_steps, d.reflow_pairs, VERSION]).encode()
                          ).hexdigest()[:16]


def _load_shard(path: Path, key: str) -> Pairs | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return Pairs(torch.from_numpy(z["x0"].copy()), torch.from_numpy(z["x1"].copy()),
                         torch.from_numpy(z["y"].copy()), key, path)
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    store.atomic_write(path, lambda fh: np.savez(fh, **arrays))


def reflow_pairs(cfg: Config, run_dir: str | Path | None, device: torch.device | str = "cpu",
                 data_shape: tuple[int, ...] | None = None, log=None) -> Pairs:
    """The student's reflow pairs: read from the teacher's shard, or generated (resuming at the first missing chunk)."""
    from ism.training.run_state import load_run  # layer 3 like train; imported here so sampling-only users stay light
    tdir = teacher_dir(cfg, run_dir)
    tcfg = from_dict(load_yaml(tdir / "config.yaml"))
    final = store.checkpoint_path(tdir, tcfg.run.steps)
    if not final.is_file():
        raise ConfigError(f"data.reflow_teacher: {tdir} has not finished training (no {final.name}); train it first")
    if tcfg.shortcut.max_steps_log2 < cfg.shortcut.max_steps_log2 and cfg.data.reflow_steps > 2 ** tcfg.shortcut.max_steps_log2:
        raise ConfigError(f"data.reflow_steps: {cfg.data.reflow_steps} is more than the teacher's 2^"
                          f"{tcfg.shortcut.max_steps_log2} steps")
    key = pair_key(run_id(tcfg), tcfg.run.steps, cfg)
    out = tdir / "reflow" / f"pairs-{key}.npz"
    if out.is_file() and (p := _load_shard(out, key)) is not None:
        return p
    tcfg_loaded, nets, tdata, _ = load_run(final, device)
    if data_shape is not None and tuple(tdata.shape) != tuple(data_shape):
        raise ConfigError(f"data.reflow_teacher: the teacher's items are {tuple(tdata.shape)}, this run's "
                          f"{tuple(data_shape)}")
    net = nets["infer"].eval()
    n, seed = cfg.data.reflow_pairs, int(key, 16) & ((1 << 62) - 1)
    labels = fixed_labels(n, tdata.num_classes)
    part = out.with_suffix(".part")
    for c in range((n + CHUNK - 1) // CHUNK):
        f = part / f"chunk-{c:05d}.npz"
        if f.is_file():
            continue
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        x0 = torch.randn((hi - lo, *tdata.shape), generator=generator(seed, c, "reflow-noise"))
        x1 = sample(net, x0.to(device), labels[lo:hi], cfg.data.reflow_steps, tcfg_loaded,
                    guidance=default_guidance(tcfg_loaded), null=tdata.num_classes).float().cpu()
        _write_npz(f, x0=x0.numpy(), x1=x1.numpy())
        if log:
            log(f"reflow pairs {hi}/{n} from teacher {tdir.name} ({cfg.data.reflow_steps} steps)")
    chunks = [np.load(part / f"chunk-{c:05d}.npz") for c in range((n + CHUNK - 1) // CHUNK)]
    _write_npz(out, x0=np.concatenate([z["x0"] for z in chunks]), x1=np.concatenate([z["x1"] for z in chunks]),
               y=labels.numpy())
    shutil.rmtree(part, ignore_errors=True)
    return _load_shard(out, key)
