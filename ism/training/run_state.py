"""A run's networks in memory: the device it trains on, the model with its EMAs and optimizer (State), and a stored
run loaded back (load_run) for sampling and evaluation."""
from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import torch

from ism.training import checkpoint as ckpt
from ism.conf.config import Config, ConfigError, from_dict, parse_yaml
from ism.training.data import Dataset, load_dataset
from ism.training.models import build_model
from ism.training.objective.ema import build_emas
from ism.training.rng import derive_seed


def resolve_device(cfg: Config) -> tuple[torch.device, torch.dtype | None]:
    """(device, autocast dtype or None) from run.device and run.precision."""
    dev = cfg.run.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {cfg.run.device!r} but CUDA is not available here; use run.device=cpu or auto")
    device = torch.device(dev)
    prec = cfg.run.precision
    if prec == "auto":
        prec = "bf16" if device.type == "cuda" else "fp32"
    return device, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on GPU, process max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class State:
    """Model, EMAs and optimizer of one run."""

    def __init__(self, cfg: Config, data: Dataset, device: torch.device):
        torch.manual_seed(derive_seed(cfg.run.seed, 0, "init"))
        self.model = build_model(cfg, data).to(device)
        self.emas = build_emas(self.model, cfg)
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                       betas=(cfg.optim.beta1, cfg.optim.beta2))

    def nets(self) -> dict[str, torch.nn.Module]:
        """The three networks by role."""
        return {"online": self.model, "target": self.emas["target"].module, "infer": self.emas["infer"].module}

    def unique_emas(self):
        """EMA objects without the shared duplicate of a single EMA."""
        return list({id(e): e for e in self.emas.values()}.values())

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema_target": self.emas["target"].state_dict(),
                "ema_infer": self.emas["infer"].state_dict(), "optim": self.optim.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.emas["target"].load_state_dict(sd["ema_target"])
        self.emas["infer"].load_state_dict(sd["ema_infer"])
        self.optim.load_state_dict(sd["optim"])


def load_run(path: str | Path, device: str | torch.device = "cpu",
             data_cache: str | Path | None = None) -> tuple[Config, dict, Dataset, int]:
    """(cfg, nets, data, step) from a run directory (its newest checkpoint) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        found = ckpt.newest_valid(p, map_location=device)  # a bad newest checkpoint is moved aside, as train() does
        if found is None:
            raise ConfigError(f"{p}: no readable checkpoint found (expected {p}/checkpoints/ckpt-XXXXXXXX.pt)")
        p, sd = found
    elif not p.is_file():
        raise ConfigError(f"{p}: no such run directory or checkpoint file")
    else:
        sd = ckpt.load(p, map_location=device)
    cfg = from_dict(parse_yaml(sd["config"], f"{p} (its config)"))
    data = load_dataset(cfg.data, data_cache)
    state = State(cfg, data, torch.device(device))
    state.load_state_dict(sd)
    state.model.eval()
    return cfg, state.nets(), data, int(sd["step"])
