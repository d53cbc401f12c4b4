"""Checkpoint files: written atomically (ism.store), loaded with weights_only=True."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ism.store import atomic_write


def save(obj: Any, path: Path) -> Path:
    """torch.save through the one atomic write: a reader never sees a half-written checkpoint."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (weights_only=True: tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)
