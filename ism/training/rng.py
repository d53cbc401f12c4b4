"""Per-step randomness derived from (seed, step, stream), so a resumed run draws exactly what an uninterrupted one does."""
from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, step: int, stream: str) -> int:
    """A 63-bit seed from (seed, step, stream); independent streams never share draws."""
    h = hashlib.blake2b(f"{seed}:{step}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def generator(seed: int, step: int, stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded from (seed, step, stream)."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, step, stream))
    return g
