"""The config schema: every key a run can set is a field here, with its help, its allowed values and its part in run
identity in the field metadata; `validate` holds the cross-key rules one field alone cannot express.

Nothing else in ism reads configuration from globals or the environment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ism.errors import ConfigError
from ism.conf.registry import MODELS


_NO_LEGACY = object()


def _f(default, help: str, *, choices=None, lo=None, hi=None, lo_open=False, hi_open=False, identity: bool = True,
       training: bool | None = None, added: bool = False, legacy=_NO_LEGACY):
    """A field with its help text, its allowed values and its part in run identity.

    identity=False: the key changes where or how visibly a run happens, not what it computes (left out of run_id).
    training=False: training never reads the key (left out of training_id); defaults to `identity`.
    added=True: a key added after run ids were pinned; hashed only when it differs from its default, so every
    stored run (which computed the default) keeps its id.
    legacy=V: a key whose default changed what runs compute; hashed unless it holds V, the behaviour stored runs
    computed before the key existed. So the new default gives every affected run a new id (a stale run is never
    reused as if it had the new behaviour), and setting V explicitly finds the stored runs again.
    """
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "identity": identity, "training": identity if training is None else training, "added": added,
            "legacy": legacy}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda d=tuple(default): d, metadata=meta)
    return field(default=default, metadata=meta)


DATASETS = ("mnist5k", "digits8", "idx", "cifar10", "image_folder", "latents", "toy2d")
TOYS = ("gaussians8", "overlap3", "checkerboard", "two_moons")
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
    toy: str = _f("gaussians8", "2-D toy distribution for data.name=toy2d (overlap3: three overlapping Gaussian classes, where guidance matters; gaussians8 and overlap3 have exact densities for the guidance ruler)", choices=TOYS)
    toy_samples: int = _f(20000, "number of 2-D toy points", lo=16)
    coupling: str = _f("independent", "noise-data pairs: independent (fresh noise each step; sOT may re-pair it) or reflow (fixed pairs from a teacher's samples, cached in its run dir; see ism/training/reflow.py)", choices=("independent", "reflow"), added=True)
    reflow_teacher: str = _f("", "data.coupling=reflow: the teacher's run directory or run id; in an ablation spec 'variant:<name>' is the same-seed trial of another variant", added=True)
    reflow_steps: int = _f(128, "sampler steps the teacher takes for each reflow pair (a power of two <= 2^shortcut.max_steps_log2)", lo=1, added=True)
    reflow_pairs: int = _f(4096, "number of reflow pairs (labels balanced over the classes)", lo=1, added=True)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("unet-tiny", "model variant from ism.training.models.MODELS", choices=tuple(MODELS))
    dropout: float = _f(0.0, "dropout inside the network", lo=0.0, hi=0.9)
    w_embed_scale: float = _f(100.0, "intrinsic guidance: w is multiplied by this before its sinusoidal embedding; large values make neighbouring grid values of w nearly orthogonal inputs, small ones let the network share what it learns across w (docs/embedded-defaults.md)", lo=0.0, lo_open=True, hi=10000.0, added=True)


@dataclass(frozen=True)
class ShortcutConfig:
    bootstrap_fraction: float = _f(0.25, "share of each batch given to self-consistency rows (paper 0.25, SM code 0.125)", lo=0.0, hi=1.0, hi_open=True)
    target: str = _f("ema", "network that makes self-consistency targets: ema (fast EMA with twin EMA, else the single EMA) or online (stop-grad live weights)", choices=("ema", "online"))
    max_steps_log2: int = _f(7, "log2 of the base step count M (7: 128 steps, d = 1 ... 1/128)", lo=1, hi=10)
    t_density: str = _f("uniform", "density of the flow-matching rows' t on the finest grid i/2^K: uniform (SM), logit_normal, mode, cosine (SD3), u_shaped (rfpp); see ism/training/objective/timesteps.py", choices=("uniform", "logit_normal", "mode", "cosine", "u_shaped"), added=True)
    t_density_m: float = _f(0.0, "logit_normal location m (t=0 is noise here, so SD3's m is -m)", lo=-5.0, hi=5.0, added=True)
    t_density_s: float = _f(1.0, "logit_normal scale s", lo=0.0, hi=10.0, lo_open=True, added=True)
    t_density_scale: float = _f(1.29, "mode sampling scale s (SD3's 1.29; 0 = uniform; SD3's allowed range -1 ... 2/(pi-2))", lo=-1.0, hi=2 / (math.pi - 2), added=True)
    t_density_u_a: float = _f(4.0, "u_shaped: p(t) ∝ exp(a t) + exp(a (1-t)), rfpp's a = 4", lo=0.0, lo_open=True, hi=50.0, added=True)
    level_allocation: str = _f("sm", "step levels of the self-consistency rows. sm: the SM code's layout, each level d = 1/2^(K-1) ... 1/2 in equal blocks of n // K rows and the remainder at d = 1 (the 1-step shortcut); cycle: levels cycled row by row (ism before 2026-12, which gave d = 1 about half of SM's rows)", choices=("sm", "cycle"), legacy="cycle")
    clip: float = _f(4.0, "clip of the intermediate point and the bootstrap target as in the SM code; 0 = off", lo=0.0)


METHODS = ("sm", "meanflow", "ct")


@dataclass(frozen=True)
class MethodConfig:
    name: str = _f("sm", "few-step method trained on the shared core: sm (shortcut models: the self-consistency and guidance rows of shortcut.* and guidance.*), meanflow (MeanFlow: the average velocity u(x_t, t, d) over [t, t + d] regressed onto sg(v + d du/dt), du/dt from one JVP; the network's step input is the continuous d), ct (consistency training in the iCT style: f(x_t, t) = x_t + (1 - t) net pulled to sg f(x_t', t') one discretisation step closer to data along the same path)", choices=METHODS, added=True)
    mf_fraction: float = _f(0.25, "meanflow: share of rows with d > 0 (r != t in the paper); the rest are plain flow-matching rows (d = 0)", lo=0.0, hi=1.0, added=True)
    mf_t_m: float = _f(0.4, "meanflow: logit-normal location of the two times drawn per row (t = 0 is noise here, so the paper's -0.4 is +0.4)", lo=-5.0, hi=5.0, added=True)
    mf_t_s: float = _f(1.0, "meanflow: logit-normal scale of the two times drawn per row", lo=0.0, hi=10.0, lo_open=True, added=True)
    mf_time_scale: float = _f(1.0, "meanflow: scale of t and d before their sin/cos features, 1 = the raw times as the paper; the shortcut models' 1000 makes u steep in t and d, which the JVP target differentiates, and learned far worse on a 2-D toy", lo=0.0, lo_open=True, added=True)
    ct_s0: int = _f(10, "ct: discretisation steps N at the start of the curriculum (iCT's s0); N doubles in equal stages up to ct_s1", lo=1, added=True)
    ct_s1: int = _f(1280, "ct: discretisation steps N at the end of the curriculum (iCT's s1)", lo=1, added=True)
    ct_p_mean: float = _f(-1.1, "ct: lognormal time sampler location on log sigma, sigma = (1 - t) / t (iCT's P_mean)", lo=-10.0, hi=10.0, added=True)
    ct_p_std: float = _f(2.0, "ct: lognormal time sampler scale on log sigma (iCT's P_std)", lo=0.0, hi=10.0, lo_open=True, added=True)
    ct_sigma_min: float = _f(0.002, "ct: smallest sigma of the Karras grid (the step nearest data; t = 1 / (1 + sigma))", lo=0.0, lo_open=True, added=True)
    ct_sigma_max: float = _f(80.0, "ct: largest finite sigma of the Karras grid; the grid's first point is t = 0 (pure noise, where the samplers start)", lo=0.0, lo_open=True, added=True)
    ct_rho: float = _f(7.0, "ct: Karras grid exponent rho", lo=0.0, lo_open=True, added=True)


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
    reduction: str = _f("sum", "sum: weighted squared error over all coefficients (all weights 1 = MSE, by Parseval); band_mean: mean per band, which is coarse-heavy (docs/method.md#multi-level-wavelet-loss)", choices=("band_mean", "sum"))
    level_weights: tuple[float, ...] = _f((), "weight per detail level, finest first; empty = the ramp from wavelet.finest_weight (finest) down to 1 (coarsest)")
    finest_weight: float = _f(2.0, "with empty level_weights: weight of the finest detail level, falling linearly to 1 at the coarsest (1 = flat); >= 1 keeps every band at or above MSE's weight", lo=0.0)
    ll_weight: float = _f(1.0, "weight of the coarsest approximation band", lo=0.0)
    mse_weight: float = _f(0.0, "weight of an added plain MSE term", lo=0.0)


LOSS_DISTANCES = ("l2", "pseudo_huber", "feature_huber", "lpips_huber")


@dataclass(frozen=True)
class LossConfig:
    distance: str = _f("l2", "premetric of a row's error: l2 (MSE, or the wavelet loss when enabled), pseudo_huber (rfpp), feature_huber (domain-CNN stand-in for LPIPS) or lpips_huber; see ism/training/objective/losses.py", choices=LOSS_DISTANCES, added=True)
    huber_c: float = _f(0.0, "pseudo-Huber c; 0 = rfpp's 0.00054 * sqrt(d), d = numbers per row (16x16x1: 0.00864)", lo=0.0, added=True)
    lpips_weights: str = _f("", "local TorchScript LPIPS network for loss.distance=lpips_huber, called net(a, b) on images in [-1, 1] (never downloaded)", added=True)
    kind_weighting: str = _f("row_share", "how the row kinds (velocity, guidance, self-consistency) combine into the batch loss. row_share: the mean over all rows, so each kind weighs its share of the batch; per_kind: the sum of each kind's mean loss, the paper's sum of three terms (docs/embedded-defaults.md)", choices=("row_share", "per_kind"), added=True)


@dataclass(frozen=True)
class OTConfig:
    enabled: bool = _f(False, "pair noise and data by optimal transport over a pool of batches (sOT)")
    pool_batches: int = _f(32, "K: batches pooled into one assignment (1 = minibatch OT)", lo=1, hi=4096)
    cost_resolution: int = _f(0, "average-pool images to this side before computing costs, 0 = full resolution", lo=0)
    prefetch: bool = _f(True, "solve the next pool in a background thread while the current one trains (same pairs)",
                        identity=False)
    coupling: str = _f("class", "class: one assignment per label, so each class's noise stays N(0, I) as at sampling; global: one over the pool, which biases class noise (docs/method.md#scaling-optimal-transport)", choices=("class", "global"))
    solver: str = _f("exact", "assignment solver: exact (scipy's dense LAP, the optimum), sparse (an exact LAP on a candidate graph, near the optimum, for big pools) or auto (exact up to 1,024 pairs per assignment); timings: docs/sot-at-scale.md", choices=("auto", "exact", "sparse"), added=True)
    candidates: int = _f(32, "sparse solver: cheapest reduced-cost candidates kept per row, and per column for columns few rows chose (more = closer to the optimum, slower)", lo=1, hi=4096, added=True)
    pool_scope: str = _f("global", "global: one pool over the global batch (gathered to one solver); device: each of ot.devices ranks pools its own shard, no communication (docs/sot-at-scale.md)", choices=("global", "device"), added=True)
    devices: int = _f(1, "data-parallel ranks the global batch is split over for ot.pool_scope=device (the shards' pairings are computed here exactly as each rank would)", lo=1, hi=4096, added=True)


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
    steps: tuple[int, ...] = _f((1, 2, 4, 8, 16, 32, 64, 128), "sampling step counts to evaluate (powers of two <= 2^max_steps_log2)", training=False)
    num_samples: int = _f(1000, "samples per step count", lo=2, training=False)
    extractor: str = _f("mnist-cnn", "feature extractor for FID/KID", choices=("mnist-cnn", "inception-v3-compat", "inception-fid-helper"), training=False)
    batch_size: int = _f(250, "sampling and feature batch size", lo=1, identity=False)
    every_steps: int = _f(0, "evaluate during training every N steps, 0 = only at the end", lo=0)
    at_end: bool = _f(True, "evaluate when training ends", training=False)
    w: float = _f(0.5, "intrinsic guidance w at inference (0.5 = CFG 1.5 under our reading of the target)", lo=0.0, hi=20.0, training=False)
    cfg_scale: float = _f(1.5, "inference CFG scale for the cfg_* modes, applied only at the finest level (2^max_steps_log2 steps)", lo=0.0, hi=20.0, training=False)
    guidance_sweep: tuple[float, ...] = _f((), "w (or CFG scale) values for the guidance sweep at 1, 4 and 128 steps; empty = none", training=False)
    sweep_steps: tuple[int, ...] = _f((1, 4, 128), "step counts of the guidance sweep", training=False)
    select_guidance: bool = _f(False, "with a guidance sweep: run the sweep on a second, held-out noise set, take the best value per step count there, and report the metric at that value on the evaluation noise (fid_selected, selected_guidance), so the selection does not flatter the reported number; also measures how far each value moves samples (guidance_displacement, and cfg_displacement: two-pass CFG at the same CFG-equivalent scale)", training=False, added=True)
    diagnostics: bool = _f(True, "compute straightness, spectrum and self-consistency diagnostics", training=False)
    weights_path: str = _f("", "local weights file for inception-v3-compat (no download)", identity=False)


@dataclass(frozen=True)
class RunConfig:
    steps: int = _f(2000, "training steps", lo=0)
    seed: int = _f(0, "seed; per-step randomness derives from (seed, step)", lo=0)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N", identity=False)
    precision: str = _f("auto", "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16", choices=("auto", "fp32", "bf16", "fp16"))
    threads: int = _f(0, "torch CPU threads, 0 = leave torch's default", lo=0, identity=False)
    checkpoint_every: int = _f(500, "checkpoint interval in steps", lo=1, identity=False)
    log_every: int = _f(50, "stats.jsonl / callback interval in steps", lo=1, identity=False)
    out_dir: str = _f("runs", "root of run directories (each named by run id)", identity=False)
    progress: bool = _f(True, "show a progress bar", identity=False)
    keep_checkpoints: int = _f(2, "checkpoints kept on disk", lo=1, identity=False)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    wavelet: WaveletConfig = field(default_factory=WaveletConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ot: OTConfig = field(default_factory=OTConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


def validate(cfg: Config) -> None:
    """Cross-key checks that one field alone cannot express."""
    for key, steps in (("eval.steps", cfg.eval.steps), ("eval.sweep_steps", cfg.eval.sweep_steps)):
        for n in steps:
            step_level(n, cfg.shortcut.max_steps_log2, key)
    if cfg.guidance.mode != "none" and not cfg.data.conditional:
        raise ConfigError(f"guidance.mode: '{cfg.guidance.mode}' needs class labels but data.conditional is false; "
                          "set guidance.mode=none for unconditional data")
    if cfg.guidance.mode == "intrinsic" and cfg.guidance.w_step > cfg.guidance.w_max > 0:
        raise ConfigError(f"guidance.w_step: {cfg.guidance.w_step} is larger than guidance.w_max={cfg.guidance.w_max}")
    _validate_method(cfg)
    if cfg.ot.enabled and cfg.ot.pool_scope == "device" and cfg.optim.batch_size % cfg.ot.devices:
        raise ConfigError(f"ot.devices: {cfg.ot.devices} does not divide optim.batch_size={cfg.optim.batch_size}; "
                          "with ot.pool_scope=device every rank takes an equal shard of the global batch")
    if cfg.data.name in ("idx", "cifar10", "image_folder", "latents") and not cfg.data.path:
        raise ConfigError(f"data.path: required for data.name={cfg.data.name} (a local path; nothing is downloaded)")
    if cfg.data.name == "toy2d" and cfg.wavelet.enabled:
        raise ConfigError("wavelet.enabled: the wavelet loss needs images; data.name=toy2d is 2-D points")
    if cfg.wavelet.enabled:
        try:
            import pywt  # only wavelet runs need pywavelets (and pay its import)
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
    _validate_loss(cfg)
    if cfg.data.coupling == "reflow":
        if not cfg.data.reflow_teacher:
            raise ConfigError("data.reflow_teacher: required with data.coupling=reflow (a teacher run dir or run id; "
                              "'variant:<name>' inside an ablation spec)")
        if cfg.ot.enabled:
            raise ConfigError("data.coupling: reflow fixes the noise-data pairs to the teacher's, so sOT has nothing "
                              "to re-pair; set ot.enabled=false (reflow replaces the coupling) or data.coupling="
                              "independent")
        step_level(cfg.data.reflow_steps, cfg.shortcut.max_steps_log2, "data.reflow_steps")
    dev = cfg.run.device
    if dev not in ("auto", "cpu", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise ConfigError(f"run.device: {dev!r} is not allowed; use auto, cpu, cuda or cuda:N")
    if cfg.optim.batch_size * cfg.shortcut.bootstrap_fraction < 1 and cfg.shortcut.bootstrap_fraction > 0:
        raise ConfigError(f"shortcut.bootstrap_fraction: {cfg.shortcut.bootstrap_fraction} x optim.batch_size="
                          f"{cfg.optim.batch_size} leaves no self-consistency row; raise either")


def _validate_method(cfg: Config) -> None:
    """Guidance modes each method can train: MeanFlow folds CFG into its target (cfg_* modes, at
    guidance.cfg_scale) or takes w as an input (intrinsic); consistency training has no velocity to guide."""
    m = cfg.method
    if m.name == "ct" and cfg.guidance.mode != "none":
        raise ConfigError(f"guidance.mode: '{cfg.guidance.mode}' with method.name=ct; consistency training has no "
                          "velocity field to guide, so use guidance.mode=none (labels stay a network input when "
                          "data.conditional is true)")
    if m.name == "meanflow" and cfg.guidance.mode != "intrinsic" and cfg.eval.guidance_sweep:
        raise ConfigError(f"eval.guidance_sweep: {list(cfg.eval.guidance_sweep)} with method.name=meanflow and "
                          f"guidance.mode={cfg.guidance.mode}; MeanFlow folds its CFG into the target at "
                          "guidance.cfg_scale, so inference has no scale to sweep (use guidance.mode=intrinsic, "
                          "or leave eval.guidance_sweep empty)")
    if m.name == "ct" and m.ct_s1 < m.ct_s0:
        raise ConfigError(f"method.ct_s1: {m.ct_s1} is below method.ct_s0={m.ct_s0}; the curriculum only doubles N")
    if m.name == "ct" and m.ct_sigma_max <= m.ct_sigma_min:
        raise ConfigError(f"method.ct_sigma_max: {m.ct_sigma_max} must exceed method.ct_sigma_min={m.ct_sigma_min}")

def _validate_loss(cfg: Config) -> None:
    """loss.distance needs a squared norm to act on (wavelet reduction=sum, l2) and, for the feature premetrics,
    images (and for LPIPS a local weights file)."""
    dist, w = cfg.loss.distance, cfg.wavelet
    if dist != "l2" and w.enabled and (w.reduction != "sum" or w.distance != "l2"):
        raise ConfigError(f"loss.distance: {dist} acts on the wavelet loss's weighted squared norm, which needs "
                          f"wavelet.reduction=sum and wavelet.distance=l2 (got {w.reduction}, {w.distance})")
    if dist in ("feature_huber", "lpips_huber") and cfg.data.name == "toy2d":
        raise ConfigError(f"loss.distance: {dist} compares image features; data.name=toy2d is 2-D points")
    if dist == "lpips_huber":
        import os.path
        path = cfg.loss.lpips_weights
        if not path or not os.path.isfile(path):
            raise ConfigError(
                f"loss.lpips_weights: {'not set' if not path else repr(path) + ' is not a file'}; loss.distance="
                "lpips_huber needs a local LPIPS network saved as TorchScript (nothing is downloaded). On a machine "
                "with the lpips package: net = lpips.LPIPS(net='vgg').eval(); torch.jit.trace(net, (x, x)).save("
                "'lpips-vgg.pt') with x an image batch in [-1, 1], then set loss.lpips_weights=/path/lpips-vgg.pt. "
                "Without it use loss.distance=feature_huber (the domain-CNN stand-in) or pseudo_huber")


def dwt_levels(side: int) -> int:
    """Deepest periodized DWT of an image side: its count of factors of two (16 -> 4, 32 -> 5, 28 -> 2)."""
    k = 0
    while side > 1 and side % 2 == 0:
        side, k = side // 2, k + 1
    return k


def step_level(n: int, max_steps_log2: int, what: str = "steps") -> int:
    """log2(n) of a sampling step count; anything but a power of two from 1 to 2^max_steps_log2 is a ConfigError."""
    top = 2 ** max_steps_log2
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n & (n - 1) or n > top:
        raise ConfigError(f"{what}: {n!r} is not allowed; sampling steps must be powers of two from 1 to {top} "
                          "(2^shortcut.max_steps_log2)")
    return int(math.log2(n))
