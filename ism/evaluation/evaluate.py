"""Evaluation: FID/KID versus sampling steps (torch-fidelity), guidance sweep, diagnostics, sample grids.

Samples come from the slow EMA ("infer") with fixed noise and balanced labels, N per step count. Images are
scored by torch-fidelity with a registered extractor (ism.training.extractors) against the held-out split, whose
statistics torch-fidelity caches under a name that hashes (data fingerprint, split, extractor + weights,
resolution); 2-D points by energy distance and sliced Wasserstein. Results are a tidy table
{train_step, steps, guidance, metric, value, n, extractor, ref_hash, extractor_accuracy} in run_dir/eval/.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from ism.evaluation import diagnostics as D
from ism.training import extractors as E
from ism.conf import metric_keys
from ism.evaluation import ruler as R
from ism.evaluation import scorers as S
from ism.training import toys
from ism.conf.config import Config, cfg_equivalent, step_level
from ism.training.sample import default_guidance, fixed_labels, fixed_noise, guidance_effect, sample
from ism.system.store import atomic_write

FIELDS = ("train_step", "steps", "guidance", "metric", "value", "n", "extractor", "ref_hash", "extractor_accuracy")
EVAL_SEED = 0             # one noise draw for every run, so variants compare on the same noise
SELECT_SEED = 1           # the held-out noise on which eval.select_guidance picks its guidance value
GRID_STEPS = (1, 4, 128)
KID_SUBSETS = 50
TRAJ_BATCH = 64           # trajectories keep every state: smaller batches bound memory
RULER_POINTS = 512        # 2-D samples per calibration scale (and per reading); readings share the calibration's
                          # noise and labels, so much of the sampling noise cancels
RULER_IMAGES = 128        # image samples per calibration scale when they must be drawn (intrinsic runs): 5 scales
                          # x 256 passes x 128 images ~ 2 min on one embedded core


# ----------------------------------------------------------------------------------------------- sampling
@contextlib.contextmanager
def _eval_mode(net: torch.nn.Module):
    was = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was)


def generate(net, cfg: Config, data, n: int, steps: int, guidance: float | None, paths: bool = False,
             calibration: bool = False, seed: int = EVAL_SEED):
    """(x0, samples, (path lengths, chords) or None) from fixed noise and balanced (or null) labels, on CPU;
    calibration: plain CFG at scale `guidance` (sample(cfg_calibration=True)); seed: the noise set."""
    x0 = fixed_noise(n, data.shape, seed)
    y = fixed_labels(n, data.num_classes) if cfg.data.conditional else torch.full((n,), data.num_classes)
    dev = next(net.parameters()).device
    bs = min(cfg.eval.batch_size, TRAJ_BATCH) if paths else cfg.eval.batch_size
    xs, lengths, chords = [], [], []
    with _eval_mode(net), torch.no_grad():
        for i in range(0, n, bs):
            out = sample(net, x0[i:i + bs].to(dev), y[i:i + bs].to(dev), steps, cfg, guidance, trajectory=paths,
                         null=data.num_classes, cfg_calibration=calibration)
            if paths:
                out, path = out
                ln, ch = D.path_lengths([p.cpu() for p in path])
                lengths.append(ln)
                chords.append(ch)
            xs.append(out.float().cpu())
    return x0, torch.cat(xs), ((torch.cat(lengths), torch.cat(chords)) if paths else None)


# ----------------------------------------------------------------------------------------------- guidance ruler
def ruler_statistic(cfg: Config, data, ext: E.ExtractorSetup | None):
    """stat(x, y) -> per-sample guidance statistic (ism.evaluation.ruler), or None where this data has no ruler: the class
    log-likelihood ratio under a 2-D toy's exact mixture, the domain classifier's logit margin on images."""
    if data.kind == "points":
        mix = toys.mixture(cfg.data.toy) if cfg.data.name == "toy2d" else None
        return None if mix is None else (lambda x, y: R.class_llr(mix, x, y))
    if ext is None or ext.name != "mnist-cnn":
        return None
    clf = E.domain_classifier(ext)
    return lambda x, y: R.logit_margin(R.classifier_logits(clf, x), y)


def effective_guidance_rows(net, cfg: Config, data, samples: dict[int, torch.Tensor],
                            sweep_top: dict[float, torch.Tensor], ext: E.ExtractorSetup | None) -> list[dict]:
    """The effective CFG-equivalent scale of the run's samples at every evaluated step count (ism.evaluation.ruler).

    Calibration: 2^K-step CFG samples over a grid of scales, from the same noise and labels as the readings.
    2-D toys with a known mixture: the exact CFG ODE of the generating densities (Euler, 2^K steps), over a grid
    reaching 2 x nominal^K; model-free, and monotone to scale 4,096 on overlap3, where a small network's own CFG
    peaked near scale 8 (it extrapolates badly far outside its training range). Images: the model's own CFG
    samples at the guidance sweep's scales (its 2^K-step samples reused for the cfg modes, drawn with
    sample(cfg_calibration=True) for intrinsic runs); none without a sweep reaching 2^K steps.
    Rows: effective_guidance, effective_guidance_bound (+1: at least the value, the statistic lies above the
    calibrated range; -1: at most), guidance_stat per step count; the calibration curve as guidance_ruler rows at
    2^K steps with the CFG scale in the guidance column.
    """
    stat = ruler_statistic(cfg, data, ext)
    K, g0 = cfg.shortcut.max_steps_log2, default_guidance(cfg)
    top = 2 ** K
    if stat is None:
        return []
    intrinsic = cfg.guidance.mode == "intrinsic"
    if data.kind == "points":
        m = min(len(samples[min(samples)]), RULER_POINTS)
        mix = toys.mixture(cfg.data.toy)
        x0, y0 = fixed_noise(m, data.shape, EVAL_SEED), fixed_labels(m, data.num_classes)
        calib = {w: mix.cfg_ode(x0, y0, w, top).float() for w in R.calibration_grid(cfg_equivalent(cfg.guidance.mode, g0), K)}
    elif sweep_top and top in cfg.eval.sweep_steps:
        if intrinsic:
            m = min(len(samples[min(samples)]), RULER_IMAGES)
            calib = {cfg_equivalent(cfg.guidance.mode, w): generate(net, cfg, data, m, top, cfg_equivalent(cfg.guidance.mode, w),
                                                      calibration=True)[1] for w in sweep_top}
        else:
            calib = dict(sweep_top)
            m = len(next(iter(calib.values())))
    else:
        return []
    if len(calib) < 2:
        return []
    y = (fixed_labels(m, data.num_classes) if cfg.data.conditional else torch.full((m,), data.num_classes))
    curve = {w: float(stat(x[:m], y).mean()) for w, x in sorted(calib.items())}
    ruler = R.calibrate(list(curve), list(curve.values()))
    rows = [D.row("guidance_ruler", v, top, w, sweep=True) for w, v in curve.items()]
    for s, x in sorted(samples.items()):
        value = float(stat(x[:m], y).mean())
        reading = ruler.read(value)
        rows += [D.row("guidance_stat", value, s, g0), D.row("effective_guidance", reading.scale, s, g0),
                 D.row("effective_guidance_bound", reading.bound, s, g0)]
    return rows


# ----------------------------------------------------------------------------------------------- the evaluation
# Over 60 lines on purpose: the sections share one cache of drawn samples (`drawn`, equal noise and effect: equal samples),
# which saves most of the guidance sweep's cost; per data kind the scorer (evaluation/scorers.py) differs, not this flow.
def evaluate_run(nets: dict, cfg: Config, data, step: int, run_dir: str | Path,
                 cache_root: str | Path) -> tuple[list[dict], dict[str, float]]:
    """Every metric of cfg.eval for the infer net; writes run_dir/eval/eval.{csv,json} and sample grids.

    cache_root: the evaluation cache (domain classifier, reference statistics), an absolute path the caller fixes
    (Ray runs trials in their own working directories)."""
    ev, run_dir = cfg.eval, Path(run_dir)
    net, n, top = nets["infer"], ev.num_samples, 2 ** cfg.shortcut.max_steps_log2
    g0 = default_guidance(cfg)
    steps = sorted(set(ev.steps))
    for s in [*steps, *ev.sweep_steps]:
        step_level(s, cfg.shortcut.max_steps_log2)
    points, is_image = data.kind == "points", data.kind == "image"
    sc = S.scorer(cfg, data, cache_root)
    ext = getattr(sc, "ext", None)
    rows: list[dict] = []

    samples = {}
    drawn: dict[tuple, torch.Tensor] = {}  # (steps, effect, noise seed): equal noise, labels, net and effect: equal samples
    for s in steps:
        want_paths = ev.diagnostics and s == steps[-1]
        x0, x, lc = generate(net, cfg, data, n, s, g0, paths=want_paths)
        samples[s] = x
        if not want_paths or min(ev.batch_size, TRAJ_BATCH) == ev.batch_size:  # drawn in the same batches
            drawn[s, guidance_effect(cfg, s, g0), EVAL_SEED] = x
        rows += sc.rows(x, s, g0)
        if ev.diagnostics and is_image:
            rows.append(D.row("spectrum_top_err", D.spectrum_top_error(x, data.test_x), s, g0))
        if lc is not None:
            rows.append(D.row("straightness", D.straightness(*lc), s, g0))
            rows.append(D.row("pairing_cost", D.pairing_cost(x0, x), s, g0))
    if ev.diagnostics:
        for s in steps[:-1]:
            rows.append(D.row("sc_gap", D.sc_gap(samples[s], samples[steps[-1]]), s, g0))

    # Guidance sweep: one model, several w (or CFG scales), at eval.sweep_steps.
    sweep_top: dict[float, torch.Tensor] = {}

    def sweep_sample(w: float, s: int, seed: int = EVAL_SEED) -> torch.Tensor:
        key = (s, guidance_effect(cfg, s, w), seed)  # a value that samples like one already drawn reuses it
        x = drawn[key] if key in drawn else drawn.setdefault(key, generate(net, cfg, data, n, s, w, seed=seed)[1])
        if s == top:
            sweep_top[w] = x  # reused by the effective-guidance search on images
        return x

    sweep_score, metric = sc.value, sc.metric
    if ev.select_guidance and ev.guidance_sweep:
        main = {r["steps"]: r["value"] for r in rows if r["metric"] == metric and r["guidance"] == g0}
        rows += selected_guidance_rows(net, cfg, data, sweep_sample, sweep_score, main, metric)
    else:
        rows += [dict(r, sweep=True) for r in D.guidance_sweep(sweep_sample, sweep_score, ev.guidance_sweep,
                                                               ev.sweep_steps, metric)]

    if ev.diagnostics and cfg.guidance.mode != "none":
        rows += effective_guidance_rows(net, cfg, data, samples, sweep_top, ext)

    # Sample grids at 1/4/128 steps (those the step budget allows): the first 100 images, one column per class;
    # for 2-D points a scatter of all samples over the held-out points.
    for s in GRID_STEPS:
        if s > top:
            continue
        k = n if points else min(n, 100)
        x = samples[s][:k] if s in samples else generate(net, cfg, data, k, s, g0)[1]
        sc.picture(x, run_dir / "samples" / f"grid_steps_{s}_train_{step:08d}.png", cfg, data)

    metrics = flat_metrics(rows, sc.accuracy)
    common = dict(train_step=step, n=n, extractor=sc.extractor, ref_hash=sc.ref_hash, extractor_accuracy=sc.accuracy)
    rows = [{k: {**r, **common}.get(k) for k in FIELDS} for r in rows]
    write_table(run_dir, rows)
    return rows, metrics


def selected_guidance_rows(net, cfg: Config, data, sweep_sample, sweep_score, main: dict[int, float],
                           metric: str) -> list[dict]:
    """The guidance sweep on held-out noise, the value it selects per step count, and that value's metric on the
    evaluation noise (eval.select_guidance); plus how far each value moves samples, against two-pass CFG.

    Rows: the sweep (sweep=True, SELECT_SEED noise); {metric}_selected at (steps, chosen value) and
    selected_guidance (the chosen value in CFG-equivalent units) per sweep step count; guidance_displacement
    (sweep=True): rms_displacement of the samples at each value from those at no guidance (w = 0, or CFG scale 1),
    on RULER_IMAGES samples of the held-out noise; cfg_displacement (intrinsic runs, 2^K steps): the same for
    two-pass CFG at the CFG-equivalent scale 1 + w. The cfg_* modes apply their inference scale only at 2^K steps
    (coarser step counts carry the scale baked in by training), so they are swept and selected there alone; at the
    other step counts their selected value is the run's own."""
    ev, top = cfg.eval, 2 ** cfg.shortcut.max_steps_log2
    g0, intrinsic = default_guidance(cfg), cfg.guidance.mode == "intrinsic"
    neutral = 0.0 if intrinsic else 1.0
    m = min(RULER_IMAGES, ev.num_samples)
    out: list[dict] = []
    for s in ev.sweep_steps:
        if not intrinsic and s != top:
            value = main[s] if s in main else sweep_score(sweep_sample(g0, s))
            out += [D.row(f"{metric}_selected", value, s, g0), D.row("selected_guidance", cfg_equivalent(cfg.guidance.mode, g0), s, g0)]
            continue
        xs = {float(w): sweep_sample(float(w), s, SELECT_SEED) for w in ev.guidance_sweep}
        sweep = [D.row(metric, sweep_score(x), s, w, sweep=True) for w, x in xs.items()]
        best = D.select_best(sweep, s)
        value = main[s] if (best == g0 and s in main) else sweep_score(sweep_sample(best, s))
        base = xs[neutral][:m] if neutral in xs else generate(net, cfg, data, m, s, neutral, seed=SELECT_SEED)[1]
        out += sweep + [D.row(f"{metric}_selected", value, s, best),
                        D.row("selected_guidance", cfg_equivalent(cfg.guidance.mode, best), s, best)]
        out += [D.row("guidance_displacement", D.rms_displacement(x[:m], base), s, w, sweep=True) for w, x in xs.items()]
        if intrinsic and s == top and data.kind == "image":
            out += [D.row("cfg_displacement", D.rms_displacement(
                generate(net, cfg, data, m, s, cfg_equivalent(cfg.guidance.mode, w), calibration=True, seed=SELECT_SEED)[1], base),
                s, w, sweep=True) for w in xs if w != neutral]
    return out


def flat_metrics(rows: list[dict], accuracy: float | None) -> dict[str, float]:
    """{metric}_steps_{N} at the run's guidance, {metric}_steps_{N}_w_{W} for sweep rows, plus extras."""
    out: dict[str, float] = {}
    for r in rows:
        out[metric_keys.key(r["metric"], r["steps"], r["guidance"] if r.get("sweep") else None)] = r["value"]
    if accuracy is not None:
        out["extractor_accuracy"] = accuracy
    return out


def write_table(run_dir: Path, rows: list[dict]) -> None:
    """Merge rows into run_dir/eval/eval.{json,csv}: rows of a re-evaluated train step replace the old ones."""
    import pandas as pd
    out = Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.json"
    old = json.loads(path.read_text()) if path.is_file() else []
    ident = ("train_step", "steps", "guidance", "metric", "extractor")
    new_keys = {tuple(r[k] for k in ident) for r in rows}
    merged = [r for r in old if tuple(r.get(k) for k in ident) not in new_keys]
    merged += [{k: r.get(k) for k in FIELDS} for r in rows]
    atomic_write(path, json.dumps(merged, indent=1))
    atomic_write(out / "eval.csv", pd.DataFrame(merged, columns=list(FIELDS)).to_csv(index=False))


def check_available(cfg: Config) -> None:
    """Fail before training when the configured extractor cannot run here (no weights, no package)."""
    if cfg.data.name == "toy2d":
        return
    if cfg.eval.extractor == "inception-fid-helper":
        E.fid_helper_weights()
    elif cfg.eval.extractor == "inception-v3-compat":
        E.inception_compat_weights(cfg.eval.weights_path)


def make_evaluator(cfg: Config, cache_root: str | Path):
    """evaluator(nets, cfg, data, step, run_dir) -> (rows, metrics), as train() calls it."""
    check_available(cfg)

    def evaluator(nets, cfg_, data, step, run_dir):
        return evaluate_run(nets, cfg_, data, step, run_dir, cache_root=cache_root)

    return evaluator
