"""Profiles: how a spec runs at one scale (preset, per-trial resources, forced run settings) and the cost model that
estimates a trial's wall time from measured per-step rates; the concurrency a profile allows."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ism.conf.config import Config, ConfigError
from ism.errors import suggest


@dataclass(frozen=True)
class Profile:
    """How a spec runs at one scale: preset, per-trial resources, forced run settings, and cost-model rates."""
    preset: str
    resources: Mapping[str, float]
    overrides: Mapping[str, Any]
    about: str
    cpus: int = 0                   # CPUs of the local Ray started for this profile, 0 = all of the machine
    train_step_s: float = 0.0       # seconds per training step per trial (cost estimate; measured here for CPU)
    sample_nfe_s: float = 0.0       # seconds per network evaluation per generated sample at eval
    overhead_s: float = 0.0         # per-trial start-up (worker, imports, data, MLflow) and FID feature cost
    sweep_overhead_s: float = 0.0   # once per sweep: the driver's imports, starting or joining Ray, the MLflow parent


# Rates for the CPU profiles come from this project's 2-core machine at 1 torch thread per trial, so that dry runs
# and ETAs are in real seconds (the measurements and their commands: docs/results.md#per-trial-cost); GPU rates are
# order-of-magnitude guesses for one A100-class GPU per trial.
# The smoke trial's start-up and every sweep's own start: benchmarks/bench_eta.py (benchmarks/results.md).
PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", {"cpu": 1}, {"run.device": "cpu", "run.progress": False},
                     "seconds per trial, for tests", cpus=2, train_step_s=0.01, sample_nfe_s=2e-5, overhead_s=30.0,
                     sweep_overhead_s=40.0),
    "embedded": Profile("mnist-cpu", {"cpu": 1}, {"run.device": "cpu", "run.progress": False},
                        "MNIST-5k on 2 CPU cores, 1 CPU and 1 torch thread per trial (two trials at once)",
                        cpus=2, train_step_s=0.074, sample_nfe_s=8e-4, overhead_s=15.0, sweep_overhead_s=40.0),
    "gpu-fashion": Profile("fashion-gpu", {"gpu": 1, "cpu": 8}, {"run.device": "cuda", "run.progress": False},
                           "Fashion-MNIST 32x32, DiT-S/2, 1 GPU per trial", train_step_s=0.05, sample_nfe_s=2e-5,
                           overhead_s=120.0),
    "gpu-cifar10": Profile("cifar10-gpu", {"gpu": 1, "cpu": 8}, {"run.device": "cuda", "run.progress": False},
                           "CIFAR-10 32x32, DiT-B/2, 1 GPU per trial", train_step_s=0.12, sample_nfe_s=5e-5,
                           overhead_s=300.0),
    "gpu-imagenet": Profile("imagenet-latents-gpu", {"gpu": 1, "cpu": 8}, {"run.device": "cuda", "run.progress": False},
                            "ImageNet-256 VAE latents, DiT-XL/2, 1 GPU per trial", train_step_s=0.6,
                            sample_nfe_s=4e-4, overhead_s=1800.0),
}
DEFAULT_PROFILE = "embedded"


def get(name: str) -> Profile:
    """The named profile, or a ConfigError listing them."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile '{name}'; choose one of {', '.join(PROFILES)}." + suggest(name, PROFILES))
    return PROFILES[name]


# ----------------------------------------------------------------------------------------------- cost
def estimate_parts(cfg: Config, profile: str) -> tuple[float, float, float]:
    """Rough wall seconds of one trial: (training steps, sampling at every evaluated step count, fixed overhead)."""
    p = PROFILES[profile]
    e = cfg.eval
    nfe = sum(e.steps) + (len(e.guidance_sweep) * sum(e.sweep_steps) if e.guidance_sweep else 0)
    if e.guidance_sweep and e.select_guidance:  # the selected value re-scored on the evaluation noise
        nfe += sum(e.sweep_steps)
    # step-cost shares of the components on the embedded preset (bench_train in benchmarks/results.md)
    extra = 1.0 + 0.08 * (cfg.guidance.mode == "intrinsic") + 0.04 * cfg.ot.enabled + 0.03 * cfg.wavelet.enabled
    evals = (1 if e.at_end else 0) + (cfg.run.steps // e.every_steps if e.every_steps else 0)
    train_s = cfg.run.steps * p.train_step_s * extra
    if cfg.data.coupling == "reflow":  # the teacher samples every pair once (CFG's two passes only at 2^K steps)
        passes = 2 if cfg.data.reflow_steps == 2 ** cfg.shortcut.max_steps_log2 and cfg.guidance.mode != "intrinsic" else 1
        train_s += cfg.data.reflow_pairs * cfg.data.reflow_steps * passes * p.sample_nfe_s
    return train_s, evals * e.num_samples * nfe * p.sample_nfe_s, p.overhead_s


def estimate_s(cfg: Config, profile: str) -> float:
    """Rough wall seconds of one trial."""
    return sum(estimate_parts(cfg, profile))


# Beyond this many device-hours a plan is most likely a typo (run.steps=1e12): estimate_s prices the biggest shipped
# sweep (components on gpu-imagenet) at under a tenth of it (tests/test_safety.py checks every shipped spec).
SANE_DEVICE_HOURS = 100_000


def cost_warning(device_hours: float, unit: str = "CPU") -> str:
    """A warning line when a plan's estimated cost is beyond SANE_DEVICE_HOURS, else ''."""
    if device_hours <= SANE_DEVICE_HOURS:
        return ""
    return (f"warning: the estimated cost, {device_hours:,.0f} {unit}-hours, is beyond {SANE_DEVICE_HOURS:,} "
            f"{unit}-hours ({device_hours / 24 / 365:,.0f} device-years); check run.steps, eval.num_samples and the "
            "seeds before running it")


def concurrency(profile: str, resources: Mapping[str, float], cap: int | None = None) -> int:
    """Trials at once: on CPU profiles the local Ray's CPUs over the per-trial share (at most `cap`, a study's
    parallelism); on GPU profiles `cap`, else 1 (costs are then given per GPU)."""
    if resources.get("gpu"):
        return cap or 1
    cpus = PROFILES[profile].cpus or os.cpu_count() or 1
    k = max(1, int(cpus // (resources.get("cpu", 1) or 1)))  # Ray packs fractional CPU shares
    return min(k, cap) if cap else k
