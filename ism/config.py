"""Typed, frozen run configuration: defaults, named presets, YAML deltas, dotted overrides, validation, hashing.

The dataclasses below are the schema: every key a run can set is a field here, with its allowed values in
the field metadata. Nothing else in ism reads configuration from globals or the environment.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A config problem, reported before any work starts (the CLI exits with status 2)."""


def _f(default, help: str, *, choices=None, lo=None, hi=None, lo_open=False, hi_open=False):
    """A field with its help text and its allowed values."""
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda d=tuple(default): d, metadata=meta)
    return field(default=default, metadata=meta)


DATASETS = ("mnist5k", "digits8", "idx", "cifar10", "image_folder", "latents", "toy2d")
TOYS = ("gaussians8", "checkerboard", "two_moons")
GUIDANCE_MODES = ("none", "cfg_finest", "cfg_every_level", "intrinsic")


@dataclass(frozen=True)
class DataConfig:
    name: str = _f("mnist5k", "dataset", choices=DATASETS)
    path: str = _f("", "local path for idx / cifar10 / image_folder / latents (never downloaded)")
    resolution: int = _f(16, "image side after preprocessing (ignored for latents and toy2d)", lo=4, hi=1024)
    conditional: bool = _f(True, "use class labels; false trains unconditionally")
    holdout_fraction: float = _f(0.1, "share of items kept out of training (reference statistics)", lo=0.0, hi=0.5)
    split_seed: int = _f(0, "seed of the train / held-out split (fixed across runs on purpose)", lo=0)
    max_items: int = _f(0, "cap on training items, 0 = all (smoke runs)", lo=0)
    toy: str = _f("gaussians8", "2-D toy distribution for data.name=toy2d", choices=TOYS)
    toy_samples: int = _f(20000, "number of 2-D toy points", lo=16)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("unet-tiny", "model variant from ism.models.MODELS")
    dropout: float = _f(0.0, "dropout inside the network", lo=0.0, hi=0.9)


@dataclass(frozen=True)
class ShortcutConfig:
    bootstrap_fraction: float = _f(0.25, "share of each batch given to self-consistency rows (paper 0.25, SM code 0.125)", lo=0.0, hi=1.0, hi_open=True)
    target: str = _f("ema", "network that makes self-consistency targets: ema (fast EMA with twin EMA, else the single EMA) or online (stop-grad live weights)", choices=("ema", "online"))
    max_steps_log2: int = _f(7, "log2 of the base step count M (7: 128 steps, d = 1 ... 1/128)", lo=1, hi=10)
    clip: float = _f(4.0, "clip of the intermediate point and the bootstrap target as in the SM code; 0 = off", lo=0.0)


@dataclass(frozen=True)
class GuidanceConfig:
    mode: str = _f("cfg_finest", "none | cfg_finest (code-faithful SM) | cfg_every_level (compounding form) | intrinsic (iSM)", choices=GUIDANCE_MODES)
    cfg_scale: float = _f(1.5, "CFG scale baked into SM's self-consistency targets (cfg_* modes)", lo=0.0, hi=20.0)
    label_dropout: float = _f(0.1, "probability of replacing a label by the null class in flow-matching rows", lo=0.0, hi=1.0)
    w_max: float = _f(3.5, "largest intrinsic guidance weight w", lo=0.0, hi=20.0)
    w_step: float = _f(0.25, "spacing of the w grid 0, w_step, ..., w_max", lo=0.0, lo_open=True)
    t_interval: float = _f(0.3, "no guidance for t < t_interval (t=0 is noise); 0 = no interval guidance", lo=0.0, hi=1.0, hi_open=True)
    interval_at_inference: bool = _f(True, "also pass w=0 to sampling steps lying wholly below t_interval")
    velocity_fraction: float = _f(0.5, "share of the d=0 rows that are plain velocity rows (w=0); the rest are guidance rows", lo=0.0, hi=1.0)
    w_source: str = _f("target", "network computing sg[s(c,w=0) - s(null,w=0)] in guidance rows", choices=("online", "target", "infer"))


@dataclass(frozen=True)
class WaveletConfig:
    enabled: bool = _f(False, "replace the latent MSE by the multi-level wavelet loss")
    wavelet: str = _f("haar", "any orthogonal pywavelets wavelet (haar, db2, ...)")
    levels: int = _f(0, "DWT levels, 0 = as many as the image size allows", lo=0, hi=10)
    distance: str = _f("l2", "per-coefficient distance", choices=("l2", "l1", "charbonnier"))
    reduction: str = _f("sum", "sum: lambda-weighted squared error summed over all coefficients / pixel count (all lambda 1 = MSE exactly, by Parseval; the default ramp keeps every coefficient at >= MSE's weight); band_mean: mean error per band, bands averaged (coarse-heavy: at 16x16 x 4 levels LL gets 19.7x MSE's weight, the finest band 0.31x)", choices=("band_mean", "sum"))
    level_weights: tuple[float, ...] = _f((), "weight per detail level, finest first; empty = the ramp from wavelet.finest_weight (finest) down to 1 (coarsest)")
    finest_weight: float = _f(2.0, "with empty level_weights: weight of the finest detail level, falling linearly to 1 at the coarsest (1 = flat); >= 1 keeps every band at or above MSE's weight", lo=0.0)
    ll_weight: float = _f(1.0, "weight of the coarsest approximation band", lo=0.0)
    mse_weight: float = _f(0.0, "weight of an added plain MSE term", lo=0.0)


@dataclass(frozen=True)
class OTConfig:
    enabled: bool = _f(False, "pair noise and data by optimal transport over a pool of batches (sOT)")
    pool_batches: int = _f(32, "K: batches pooled into one assignment (1 = minibatch OT)", lo=1, hi=4096)
    cost_resolution: int = _f(0, "average-pool images to this side before computing costs, 0 = full resolution", lo=0)
    prefetch: bool = _f(True, "solve the next pool in a background thread while the current one trains (same pairs)")
    coupling: str = _f("class", "class: one assignment within each label of the pool, so each class's noise stays exactly N(0, I), as at sampling (unconditional runs pair globally); global: one assignment over the whole pool, which biases each class's noise toward its images (train/sample mismatch for conditional sampling)", choices=("class", "global"))


@dataclass(frozen=True)
class EMAConfig:
    twin: bool = _f(False, "twin EMA: a fast EMA makes targets, a slow one samples")
    decay: float = _f(0.999, "single-EMA decay (used when twin=false)", lo=0.0, hi=1.0, hi_open=True)
    half_life_steps: float = _f(0.0, "single-EMA half-life in steps; overrides decay when > 0", lo=0.0)
    target_decay: float = _f(0.95, "fast (target) EMA decay", lo=0.0, hi=1.0, hi_open=True)
    target_half_life_steps: float = _f(0.0, "fast EMA half-life in steps; overrides target_decay when > 0", lo=0.0)
    infer_decay: float = _f(0.9999, "slow (inference) EMA decay", lo=0.0, hi=1.0, hi_open=True)
    infer_half_life_steps: float = _f(0.0, "slow EMA half-life in steps; overrides infer_decay when > 0", lo=0.0)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _f(1e-4, "AdamW learning rate", lo=0.0, hi=1.0, lo_open=True)
    weight_decay: float = _f(0.1, "AdamW weight decay", lo=0.0, hi=10.0)
    beta1: float = _f(0.9, "AdamW beta1", lo=0.0, hi=1.0, hi_open=True)
    beta2: float = _f(0.999, "AdamW beta2", lo=0.0, hi=1.0, hi_open=True)
    batch_size: int = _f(64, "rows per step (self-consistency + flow matching)", lo=2)
    warmup_steps: int = _f(0, "linear learning-rate warmup", lo=0)
    grad_clip: float = _f(0.0, "gradient-norm clip, 0 = off", lo=0.0)


@dataclass(frozen=True)
class EvalConfig:
    steps: tuple[int, ...] = _f((1, 2, 4, 8, 16, 32, 64, 128), "sampling step counts to evaluate (powers of two <= 2^max_steps_log2)")
    num_samples: int = _f(1000, "samples per step count", lo=2)
    extractor: str = _f("mnist-cnn", "feature extractor for FID/KID", choices=("mnist-cnn", "inception-v3-compat", "inception-fid-helper"))
    batch_size: int = _f(250, "sampling and feature batch size", lo=1)
    every_steps: int = _f(0, "evaluate during training every N steps, 0 = only at the end", lo=0)
    at_end: bool = _f(True, "evaluate when training ends")
    w: float = _f(0.5, "intrinsic guidance w at inference (0.5 = CFG 1.5 under our reading of the target)", lo=0.0, hi=20.0)
    cfg_scale: float = _f(1.5, "inference CFG scale for the cfg_* modes, applied only at the finest level (2^max_steps_log2 steps)", lo=0.0, hi=20.0)
    guidance_sweep: tuple[float, ...] = _f((), "w (or CFG scale) values for the guidance sweep at 1, 4 and 128 steps; empty = none")
    sweep_steps: tuple[int, ...] = _f((1, 4, 128), "step counts of the guidance sweep")
    diagnostics: bool = _f(True, "compute straightness, spectrum and self-consistency diagnostics")
    weights_path: str = _f("", "local weights file for inception-v3-compat (no download)")


@dataclass(frozen=True)
class RunConfig:
    steps: int = _f(2000, "training steps", lo=0)
    seed: int = _f(0, "seed; per-step randomness derives from (seed, step)", lo=0)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    precision: str = _f("auto", "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16", choices=("auto", "fp32", "bf16", "fp16"))
    threads: int = _f(0, "torch CPU threads, 0 = leave torch's default", lo=0)
    checkpoint_every: int = _f(500, "checkpoint interval in steps", lo=1)
    log_every: int = _f(50, "stats.jsonl / callback interval in steps", lo=1)
    out_dir: str = _f("runs", "root of run directories (each named by run id)")
    progress: bool = _f(True, "show a progress bar")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk", lo=1)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    wavelet: WaveletConfig = field(default_factory=WaveletConfig)
    ot: OTConfig = field(default_factory=OTConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Keys that change where or how visibly a run happens, not what it computes: left out of the run identity.
NON_IDENTITY_KEYS = frozenset({
    "run.device", "run.threads", "run.checkpoint_every", "run.log_every", "run.out_dir", "run.progress",
    "run.keep_checkpoints", "eval.batch_size", "eval.weights_path", "ot.prefetch",
})

# Named presets live in ism/presets.py (data only); re-exported here because every caller resolves through config.
from ism.presets import DEFAULT_PRESET, PRESETS  # noqa: E402


# ----------------------------------------------------------------------------------------------- dict <-> config
def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dict (tuples become lists) for YAML/JSON."""
    out = {}
    for sec in dataclasses.fields(cfg):
        sub = getattr(cfg, sec.name)
        out[sec.name] = {f.name: (list(v) if isinstance(v := getattr(sub, f.name), tuple) else v)
                         for f in dataclasses.fields(sub)}
    return out


def flatten(d: Mapping[str, Any] | Config, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    if isinstance(d, Config):
        d = to_dict(d)
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}}; also accepts nested values."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: '{p}' is a value, not a section")
        if isinstance(value, Mapping):
            node.setdefault(parts[-1], {})
            node[parts[-1]] = deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return out


def deep_merge(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; delta wins; dotted keys in delta are expanded."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for k, v in unflatten(delta).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _suggest(name: str, allowed) -> str:
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _coerce(key: str, value: Any, f: dataclasses.Field, hint) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        elem = typing.get_args(hint)[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {elem.__name__}, got {type(value).__name__} {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, f, elem) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - schema bug


def _check_range(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    vals = value if isinstance(value, tuple) else (value,)
    for v in vals:
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise ConfigError(f"{key}: {v!r} is not allowed; choose one of {', '.join(map(str, meta['choices']))}."
                              + _suggest(str(v), meta["choices"]))
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and (v < lo or (meta.get("lo_open") and v == lo)):
            raise ConfigError(f"{key}: {v!r} is out of range; allowed {'>' if meta.get('lo_open') else '>='} {lo}"
                              + (f" and {'<' if meta.get('hi_open') else '<='} {hi}" if hi is not None else ""))
        if hi is not None and (v > hi or (meta.get("hi_open") and v == hi)):
            raise ConfigError(f"{key}: {v!r} is out of range; allowed {'<' if meta.get('hi_open') else '<='} {hi}"
                              + (f" and {'>' if meta.get('lo_open') else '>='} {lo}" if lo is not None else ""))


def from_dict(d: Mapping[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict over the defaults."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"config must be a mapping of sections, got {type(d).__name__}")
    d = unflatten(d)
    sections = {f.name: f for f in dataclasses.fields(Config)}
    built = {}
    for name, value in d.items():
        if name not in sections:
            raise ConfigError(f"unknown config section '{name}'; allowed: {', '.join(sections)}." + _suggest(name, sections))
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping of keys, got {type(value).__name__} {value!r}")
    for name, sec in sections.items():
        cls = sec.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.get(name, {}).items():
            full = f"{name}.{key}"
            if key not in fields:
                raise ConfigError(f"unknown config key '{full}'; allowed in '{name}': {', '.join(fields)}."
                                  + _suggest(key, fields))
            v = _coerce(full, value, fields[key], hints[key])
            _check_range(full, v, fields[key].metadata)
            kwargs[key] = v
        built[name] = cls(**kwargs)
    cfg = Config(**built)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-key checks that one field alone cannot express."""
    top = 2 ** cfg.shortcut.max_steps_log2
    for key, steps in (("eval.steps", cfg.eval.steps), ("eval.sweep_steps", cfg.eval.sweep_steps)):
        for n in steps:
            if n < 1 or n & (n - 1) or n > top:
                raise ConfigError(f"{key}: {n} is not allowed; sampling steps must be powers of two from 1 to "
                                  f"{top} (2^shortcut.max_steps_log2)")
    if cfg.guidance.mode != "none" and not cfg.data.conditional:
        raise ConfigError(f"guidance.mode: '{cfg.guidance.mode}' needs class labels but data.conditional is false; "
                          "set guidance.mode=none for unconditional data")
    if cfg.guidance.mode == "intrinsic" and cfg.guidance.w_step > cfg.guidance.w_max > 0:
        raise ConfigError(f"guidance.w_step: {cfg.guidance.w_step} is larger than guidance.w_max={cfg.guidance.w_max}")
    if cfg.data.name in ("idx", "cifar10", "image_folder", "latents") and not cfg.data.path:
        raise ConfigError(f"data.path: required for data.name={cfg.data.name} (a local path; nothing is downloaded)")
    if cfg.data.name == "toy2d" and cfg.wavelet.enabled:
        raise ConfigError("wavelet.enabled: the wavelet loss needs images; data.name=toy2d is 2-D points")
    if cfg.wavelet.enabled:
        try:
            import pywt
            w = pywt.Wavelet(cfg.wavelet.wavelet)
        except (ValueError, ImportError) as e:
            raise ConfigError(f"wavelet.wavelet: '{cfg.wavelet.wavelet}' is not a pywavelets discrete wavelet ({e})")
        if not w.orthogonal:
            raise ConfigError(f"wavelet.wavelet: '{cfg.wavelet.wavelet}' is not orthogonal; use haar, dbN, symN or coifN")
        lw = cfg.wavelet.level_weights
        if any(v < 0 for v in lw):
            raise ConfigError(f"wavelet.level_weights: {list(lw)} has a negative weight; allowed >= 0")
        if lw and not any(lw) and cfg.wavelet.ll_weight == 0 and cfg.wavelet.mse_weight == 0:
            raise ConfigError("wavelet.level_weights / wavelet.ll_weight: all weights are 0; at least one must be > 0")
        if lw and cfg.data.name != "latents":
            top = dwt_levels(cfg.data.resolution)
            levels = cfg.wavelet.levels or top
            if cfg.wavelet.levels > top:
                raise ConfigError(f"wavelet.levels: {cfg.wavelet.levels} is too many for {cfg.data.resolution}x"
                                  f"{cfg.data.resolution} images; allowed 1..{top} (or 0 = {top})")
            if len(lw) != levels:
                raise ConfigError(f"wavelet.level_weights: {len(lw)} values given but the DWT has {levels} levels at "
                                  f"data.resolution={cfg.data.resolution}; give one weight per level (finest first) "
                                  "or leave it empty for the default ramp")
    dev = cfg.run.device
    if dev not in ("auto", "cpu", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise ConfigError(f"run.device: {dev!r} is not allowed; use auto, cpu, cuda or cuda:N")
    if cfg.optim.batch_size * cfg.shortcut.bootstrap_fraction < 1 and cfg.shortcut.bootstrap_fraction > 0:
        raise ConfigError(f"shortcut.bootstrap_fraction: {cfg.shortcut.bootstrap_fraction} x optim.batch_size="
                          f"{cfg.optim.batch_size} leaves no self-consistency row; raise either")


def dwt_levels(side: int) -> int:
    """Deepest periodized DWT of an image side: its count of factors of two (16 -> 4, 32 -> 5, 28 -> 2)."""
    k = 0
    while side > 1 and side % 2 == 0:
        side, k = side // 2, k + 1
    return k


# ----------------------------------------------------------------------------------------------- loading
def parse_override(item: str) -> tuple[str, Any]:
    """'guidance.mode=intrinsic' -> ('guidance.mode', 'intrinsic'); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. guidance.mode=intrinsic")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(f"override {item!r}: the key must be section.name, e.g. optim.lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
    if isinstance(value, str) and raw.strip() not in ("",):
        # YAML reads '1e-3' as a string; accept it as a number.
        try:
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
        except ValueError:
            pass
    return key, value


def read_yaml_mapping(path: str | Path, what: str = "config file",
                      expected: str = "a mapping of config sections at the top level") -> tuple[dict[str, Any], str]:
    """(mapping, text) of a YAML file; a missing, malformed or non-mapping file is a ConfigError naming its path."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    text = p.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: expected {expected}")
    return dict(data), text


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML delta file; a missing or malformed file names its path."""
    return read_yaml_mapping(path)[0]


def preset_delta(name: str) -> dict[str, Any]:
    """The delta dict of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}." + _suggest(name, PRESETS))
    return PRESETS[name]


def resolve(preset: str = DEFAULT_PRESET, files: list[str | Path] = (), overrides: list[str] | Mapping[str, Any] = ()) -> Config:
    """Preset, then YAML delta files in order (a file may name its own 'preset:'), then key=value overrides."""
    merged: dict[str, Any] = {}
    file_deltas = []
    for f in files:
        delta = load_yaml(f)
        if "preset" in delta:
            preset = delta.pop("preset")
        file_deltas.append(delta)
    merged = deep_merge(merged, preset_delta(preset))
    for delta in file_deltas:
        merged = deep_merge(merged, delta)
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        merged = deep_merge(merged, {key: value})
    return from_dict(merged)


def replace(cfg: Config, **dotted: Any) -> Config:
    """A validated copy with dotted keys changed: replace(cfg, **{'run.steps': 10})."""
    return from_dict(deep_merge(to_dict(cfg), dotted))


def cache_dir() -> Path:
    """$ISM_CACHE, else .ism/cache under the working directory (evaluation cache: domain classifier, statistics)."""
    return Path(os.environ.get("ISM_CACHE") or Path.cwd() / ".ism" / "cache")


# ----------------------------------------------------------------------------------------------- identity
def identity_dict(cfg: Config) -> dict[str, Any]:
    """The flattened keys that define what a run computes."""
    return {k: v for k, v in sorted(flatten(cfg).items()) if k not in NON_IDENTITY_KEYS}


def run_id(cfg: Config) -> str:
    """Run identity: short hash of the resolved config (seed included)."""
    blob = json.dumps(identity_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def training_id(cfg: Config) -> str:
    """Identity of what training computes: the run identity without the evaluation settings (training never reads
    them, except eval.every_steps, which adds evaluations during training), so runs that differ only in how they
    are evaluated can share one training."""
    keys = {k: v for k, v in identity_dict(cfg).items() if not k.startswith("eval.") or k == "eval.every_steps"}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def diff(base: Config, other: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ: {key: (base, other)}."""
    a, b = flatten(base), flatten(other)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe() -> list[tuple[str, Any, str]]:
    """(key, default, help) for every config key: the reference table in the README."""
    rows = []
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(sec.default_factory):  # type: ignore[misc]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{sec.name}.{f.name}", default, f.metadata.get("help", "")))
    return rows


def ema_decay(decay: float, half_life_steps: float) -> float:
    """Per-step decay from a half-life in steps when given, else the decay itself."""
    return 0.5 ** (1.0 / half_life_steps) if half_life_steps > 0 else decay


def reference_markdown() -> str:
    """The config reference table (docs/config-reference.md is generated from it)."""
    lines = ["# Config reference", "", "Generated by `python -m ism.config`; every key can be set in a YAML delta file or as",
             "`section.key=value` on the command line. Presets: " + ", ".join(f"`{p}`" for p in PRESETS) + ".", "",
             "| key | default | meaning |", "|---|---|---|"]
    for key, default, help_ in describe():
        lines.append(f"| `{key}` | `{json.dumps(list(default) if isinstance(default, tuple) else default)}` | {help_} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
