"""The targets function of the configured few-step method (method.name): one dispatch for the training loop.

sm keeps targets.build_rows (the guidance modes of shortcut models); meanflow and ct live in their own modules,
which import targets' path and row helpers (so targets cannot import them back).
"""
from __future__ import annotations

import torch

from ism.conf.config import Config
from ism.training.objective import consistency, meanflow, targets
from ism.training.objective.targets import Rows


def build_rows(x1, y, x0, nets: dict, cfg: Config, gen: torch.Generator, null: int,
               step: int = 0) -> tuple[Rows, dict]:
    """The rows of one training step; step feeds consistency training's discretisation curriculum."""
    name = cfg.method.name
    if name == "sm":
        return targets.build_rows(x1, y, x0, nets, cfg, gen, null)
    if not cfg.data.conditional:
        y = torch.full_like(y, null)
    if name == "meanflow":
        return meanflow.targets_meanflow(x1, y, x0, nets, cfg, gen, null)
    if name == "ct":
        return consistency.targets_ct(x1, y, x0, nets, cfg, gen, null, step=step)
    raise ValueError(f"method.name: unknown method {name!r}")
