"""Checkpoint files: written atomically (ism.system.store), loaded with weights_only=True; a resume takes the newest one
that verifies and moves a bad one aside (truncated, empty or garbage: a disk that filled up before the atomic write
existed, a copy cut short, a bit flip)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from ism.system import store
from ism.system.store import atomic_write

REQUIRED = ("model", "ema_target", "ema_infer", "optim", "step", "elapsed_s", "pairs", "config")


def save(obj: Any, path: Path) -> Path:
    """torch.save through the one atomic write: a reader never sees a half-written checkpoint."""
    try:
        return atomic_write(path, lambda fh: torch.save(obj, fh))
    except Exception as e:
        # Ctrl-C during the write: torch's zip writer then fails on close, which hid the interrupt behind a
        # traceback (seen in tests/test_cli.py's Ctrl-C test); the partial file is already removed
        if isinstance(e.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (weights_only=True: tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def verify(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict | None, str]:
    """(state dict, '') of a checkpoint that loads and holds a training state of the step its name says, else
    (None, why not)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return None, "empty"
        sd = load(path, map_location)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors... for a bad file
        return None, "unreadable: " + (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
    m = store.CHECKPOINT.search(path.name)
    if not isinstance(sd, dict) or any(k not in sd for k in REQUIRED):
        return None, "not a training checkpoint (keys missing)"
    if m and int(sd["step"]) != int(m.group(1)):
        return None, f"holds step {sd['step']}, not the step of its name"
    return sd, ""


def quarantine(path: Path, why: str) -> Path:
    """Move a bad checkpoint aside (ckpt-X.pt.bad-<reason>): no longer a checkpoint to resume from, kept to inspect."""
    tag = "".join(c if c.isalnum() else "-" for c in why.split(":")[0]).strip("-")[:40] or "bad"
    dst = Path(path).with_name(Path(path).name + f".bad-{tag}")
    os.replace(path, dst)
    return dst


def newest_valid(run_dir: Path, map_location: str | torch.device = "cpu",
                 say: Callable[[str], None] | None = None) -> tuple[Path, dict] | None:
    """(path, state dict) of the newest checkpoint of a run dir that verifies; every newer one that does not is
    quarantined, with one line each (`say`, stderr by default). None when no checkpoint verifies."""
    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    for _, path in reversed(store.list_checkpoints(run_dir)):
        sd, why = verify(path, map_location)
        if sd is not None:
            return path, sd
        moved = quarantine(path, why)
        say(f"checkpoint {path} is bad ({why}); moved aside to {moved.name}; resuming from the newest good one, if any")
    return None
