"""Named presets (EDM2-style): deltas over the config dataclass defaults, each with its reason.

Plain data, so that config.py (the schema) and this file (the recipes) can be read apart; `--preset` choices are
the keys of PRESETS.
"""
from __future__ import annotations

from typing import Any

# Named presets: deltas over the dataclass defaults, each with its reason.
PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: real MNIST digits on 2 CPU cores. Half-lives replace the paper's decays because
    # 0.9999 barely moves in a few thousand steps (docs/method.md#scale); ratios to run length are kept.
    "mnist-cpu": {
        "data": {"name": "mnist5k", "resolution": 16},
        "model": {"name": "unet-tiny"},
        # Batch 32 x 1,500 steps at lr 1e-3: the cheapest setting that gives recognisable 128-step digits
        # (docs/embedded-model.md).
        "optim": {"lr": 1e-3, "batch_size": 32, "weight_decay": 0.01, "warmup_steps": 100},
        # Half-lives keep the paper's ratios to run length where a 1,500-step run allows (docs/method.md#scale): the
        # slow EMA at the same share of the run as the paper's 0.9999 in a 250K-step ablation run; the fast target
        # EMA near-live, as the paper's 0.95 is. The target half-life is the EMA study's best (twin-EMA block of
        # docs/embedded-defaults.md).
        "ema": {"half_life_steps": 45.0, "target_half_life_steps": 0.5, "infer_half_life_steps": 45.0},
        # Per-block tuning, as the paper does: w_max, the velocity share and the inference w are the guidance study's
        # best on full iSM (the learned w response is weaker than w (s_c - s_null), so w = 0.5 under-guides). SM's
        # own CFG scale gets its own study, so the baseline gets the same care; 2 keeps the 128-step end and equals
        # the intrinsic side's CFG-equivalent 1 + w. Studies and their FIDs: docs/embedded-defaults.md.
        "guidance": {"w_max": 2.0, "velocity_fraction": 0.75, "cfg_scale": 2.0},
        # The wavelet study's best finest-level weight (docs/embedded-defaults.md); the schema keeps 2.0.
        "wavelet": {"finest_weight": 4.0},
        # 500 samples per step count keep evaluation within a trial's budget (docs/results.md#per-trial-cost).
        # Batch 64 samples faster per image than 250 on one core (cache-sized activations; bench_eval in
        # benchmarks/results.md); eval.batch_size is not part of the run identity, and each sample's noise is fixed.
        "eval": {"num_samples": 500, "extractor": "mnist-cnn", "batch_size": 64, "w": 1.0, "cfg_scale": 2.0},
        "run": {"steps": 1500, "checkpoint_every": 250, "threads": 1},
    },
    # Seconds, for tests: a tiny network, a few steps, few samples.
    "smoke": {
        "data": {"name": "mnist5k", "resolution": 16, "max_items": 512},
        "model": {"name": "unet-smoke"},
        "optim": {"lr": 1e-3, "batch_size": 16, "weight_decay": 0.01},
        "ema": {"half_life_steps": 5.0, "target_half_life_steps": 1.0, "infer_half_life_steps": 5.0},
        "eval": {"num_samples": 64, "steps": (1, 2, 128), "batch_size": 64},
        "run": {"steps": 8, "checkpoint_every": 4, "log_every": 2, "threads": 1},
    },
    # 2-D diagnostics: class-conditional Gaussian mixture, MLP, energy distance instead of FID.
    "toy2d": {
        "data": {"name": "toy2d", "toy": "gaussians8"},
        "model": {"name": "mlp2d"},
        "optim": {"lr": 1e-3, "batch_size": 256, "weight_decay": 0.0},
        "ema": {"half_life_steps": 50.0, "target_half_life_steps": 5.0, "infer_half_life_steps": 100.0},
        "eval": {"num_samples": 2000, "steps": (1, 2, 4, 8, 128)},
        "run": {"steps": 2000, "checkpoint_every": 500, "threads": 1},
    },
    # GPU profiles: paper-scale settings (docs/method.md#scale); validated by tests, run on clusters.
    "fashion-gpu": {
        "data": {"name": "idx", "path": "/usr/share/datasets/fashion-mnist", "resolution": 32},
        "model": {"name": "dit-s/2"},
        "optim": {"batch_size": 256},
        "ema": {"infer_half_life_steps": 2000.0, "target_half_life_steps": 13.5},
        "eval": {"num_samples": 10000, "extractor": "mnist-cnn"},
        # sOT pools of K*B = 8,192 pairs: exact up to 1,024 pairs per assignment, the sparse solver above, because the
        # exact solve would stall the GPU at 8,192 (docs/sot-at-scale.md). Class coupling splits the pool per class,
        # so with >= 8 classes most sub-problems stay exact.
        "ot": {"solver": "auto"},
        "run": {"steps": 100000, "checkpoint_every": 5000, "log_every": 100},
    },
    "cifar10-gpu": {
        "data": {"name": "cifar10", "path": "data/cifar-10-batches-py", "resolution": 32},
        "model": {"name": "dit-b/2"},
        "optim": {"batch_size": 256},
        "eval": {"num_samples": 10000, "extractor": "inception-v3-compat"},
        # sOT pools of K*B = 8,192 pairs: exact up to 1,024 pairs per assignment, the sparse solver above, because the
        # exact solve would stall the GPU at 8,192 (docs/sot-at-scale.md). Class coupling splits the pool per class,
        # so with >= 8 classes most sub-problems stay exact.
        "ot": {"solver": "auto"},
        "run": {"steps": 400000, "checkpoint_every": 10000, "log_every": 100},
    },
    "imagenet-latents-gpu": {
        "data": {"name": "latents", "path": "data/imagenet256-latents"},
        "model": {"name": "dit-xl/2"},
        "optim": {"batch_size": 256},
        "eval": {"num_samples": 50000, "extractor": "inception-v3-compat"},
        # sOT pools of K*B = 8,192 pairs: exact up to 1,024 pairs per assignment, the sparse solver above, because the
        # exact solve would stall the GPU at 8,192 (docs/sot-at-scale.md). Class coupling splits the pool per class,
        # so with >= 8 classes most sub-problems stay exact.
        "ot": {"solver": "auto"},
        "run": {"steps": 800000, "checkpoint_every": 10000, "log_every": 100},
    },
}
DEFAULT_PRESET = "mnist-cpu"
