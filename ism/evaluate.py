"""Evaluation: FID/KID versus sampling steps (torch-fidelity), guidance sweep, diagnostics, sample grids.

Samples come from the slow EMA ("infer") with fixed noise and balanced labels, N per step count. Images are
scored by torch-fidelity with a registered extractor (ism.extractors) against the held-out split, whose
statistics torch-fidelity caches under a name that hashes (data fingerprint, split, extractor + weights,
resolution); 2-D points by energy distance and sliced Wasserstein. Results are a tidy table
{train_step, steps, guidance, metric, value, n, extractor, ref_hash, extractor_accuracy} in run_dir/eval/.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_fidelity

from ism import diagnostics as D
from ism import extractors as E
from ism import metric_keys
from ism.config import Config, step_level
from ism.sample import default_guidance, fixed_labels, fixed_noise, sample, save_grid
from ism.store import atomic_write

FIELDS = ("train_step", "steps", "guidance", "metric", "value", "n", "extractor", "ref_hash", "extractor_accuracy")
EVAL_SEED = 0             # one noise draw for every run, so variants compare on the same noise
GRID_STEPS = (1, 4, 128)
KID_SUBSETS = 50
TRAJ_BATCH = 64           # trajectories keep every state: smaller batches bound memory
EG_SAMPLES = 256          # samples per guidance value in the 2-D effective-guidance search (128 steps each)
CFG_GRID = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 17.0)  # reaches w^7 = 17 for SM's w = 1.5


# ----------------------------------------------------------------------------------------------- reference stats
class ImageSet(torch.utils.data.Dataset):
    """Images in [-1, 1] as torch-fidelity items (uint8 [C, H, W]; latents stay float); counts reads."""

    def __init__(self, x: torch.Tensor, rgb: bool = False, image: bool = True):
        self.x = E.to_uint8(x) if image else x.float()
        self.rgb = rgb and self.x.shape[1] == 1
        self.reads = 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i].expand(3, -1, -1) if self.rgb else self.x[i]


@dataclass
class Reference:
    images: ImageSet
    cache_name: str
    ref_hash: str


def reference(data, ext: E.ExtractorSetup) -> Reference:
    """The held-out split and the cache name of its statistics; any change of the key gives a new name."""
    key = {"fingerprint": data.fingerprint, "split": "test", "extractor": ext.key, "resolution": list(data.shape),
           "rgb": ext.rgb}
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Reference(ImageSet(data.test_x, ext.rgb, data.kind == "image"), f"ism-ref-{h}", h)


def kid_subset_size(n1: int, n2: int) -> int:
    """KID subsets of half the smaller set (at most 1,000): subsets as large as the set would all be equal."""
    return max(min(1000, min(n1, n2) // 2), min(n1, n2, 2))


def fid_kid(samples: torch.Tensor | ImageSet, ref: Reference | ImageSet, ext: E.ExtractorSetup,
            cache_root: str | Path | None = None, kid: bool = True, image: bool = True) -> dict[str, float]:
    """FID (and KID) of samples against a Reference (cached stats) or another ImageSet (not cached)."""
    a = samples if isinstance(samples, ImageSet) else ImageSet(samples, ext.rgb, image)
    b = ref.images if isinstance(ref, Reference) else ref
    if isinstance(ref, Reference) and cache_root is None:
        raise ValueError("fid_kid: reference statistics are cached; pass cache_root")
    kw = dict(ext.kwargs)
    if isinstance(ref, Reference):
        kw.update(input2_cache_name=ref.cache_name, cache_root=str(cache_root), cache=True)
    else:
        kw.update(cache=False)
    m = torch_fidelity.calculate_metrics(
        input1=a, input2=b, fid=True, kid=kid, kid_subsets=KID_SUBSETS, kid_subset_size=kid_subset_size(len(a), len(b)),
        cuda=torch.cuda.is_available(), save_cpu_ram=True, verbose=False, batch_size=ext.batch_size, **kw)
    out = {"fid": m["frechet_inception_distance"]}
    if kid:
        out.update(kid=m["kernel_inception_distance_mean"], kid_std=m["kernel_inception_distance_std"])
    return out


# ----------------------------------------------------------------------------------------------- sampling
def cfg_equivalent(cfg: Config, g: float) -> float:
    """A guidance value of the run in CFG-scale units, one scale for every mode: 1 + w for intrinsic guidance (its
    target under our reading is (1+w) v_c − w v_u, i.e. CFG at scale 1 + w), the CFG scale itself for the cfg_*
    modes."""
    return 1.0 + float(g) if cfg.guidance.mode == "intrinsic" else float(g)


@contextlib.contextmanager
def _eval_mode(net: torch.nn.Module):
    was = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was)


def generate(net, cfg: Config, data, n: int, steps: int, guidance: float | None, paths: bool = False):
    """(x0, samples, (path lengths, chords) or None) from fixed noise and balanced (or null) labels, on CPU."""
    x0 = fixed_noise(n, data.shape, EVAL_SEED)
    y = fixed_labels(n, data.num_classes) if cfg.data.conditional else torch.full((n,), data.num_classes)
    dev = next(net.parameters()).device
    bs = min(cfg.eval.batch_size, TRAJ_BATCH) if paths else cfg.eval.batch_size
    xs, lengths, chords = [], [], []
    with _eval_mode(net), torch.no_grad():
        for i in range(0, n, bs):
            out = sample(net, x0[i:i + bs].to(dev), y[i:i + bs].to(dev), steps, cfg, guidance, trajectory=paths,
                         null=data.num_classes)
            if paths:
                out, path = out
                ln, ch = D.path_lengths([p.cpu() for p in path])
                lengths.append(ln)
                chords.append(ch)
            xs.append(out.float().cpu())
    return x0, torch.cat(xs), ((torch.cat(lengths), torch.cat(chords)) if paths else None)


def _save_points(x: torch.Tensor, ref: torch.Tensor, path: Path) -> None:
    """Scatter of 2-D samples over the held-out points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.8", label="data")
    ax.scatter(x[:, 0], x[:, 1], s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- the evaluation
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
    ext = None if points else E.setup(ev.extractor, data, ev.weights_path, ev.batch_size,
                                      root=Path(cache_root))
    ref = None if points else reference(data, ext)
    fid_root = Path(cache_root) / "fidelity"
    rows: list[dict] = []

    def score(x: torch.Tensor, s: int, g: float | None, kid: bool = True) -> list[dict]:
        if points:
            held = data.test_x
            return [D.row("energy_distance", D.energy_distance(x, held), s, g),
                    D.row("sliced_wasserstein", D.sliced_wasserstein(x, held), s, g)]
        return [D.row(k, v, s, g) for k, v in fid_kid(x, ref, ext, fid_root, kid=kid, image=is_image).items()]

    samples = {}
    for s in steps:
        want_paths = ev.diagnostics and s == steps[-1]
        x0, x, lc = generate(net, cfg, data, n, s, g0, paths=want_paths)
        samples[s] = x
        rows += score(x, s, g0)
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

    def sweep_sample(w: float, s: int) -> torch.Tensor:
        x = generate(net, cfg, data, n, s, w)[1]
        if s == top:
            sweep_top[w] = x  # reused by the effective-guidance search on images
        return x

    def sweep_score(x: torch.Tensor) -> float:
        if points:
            return D.energy_distance(x, data.test_x)
        return fid_kid(x, ref, ext, fid_root, kid=False, image=is_image)["fid"]

    rows += [dict(r, sweep=True) for r in D.guidance_sweep(sweep_sample, sweep_score, ev.guidance_sweep,
                                                           ev.sweep_steps, "energy_distance" if points else "fid")]

    # Effective guidance: the w' whose 2^K-step sample best matches the 1-step sample at the run's guidance,
    # recorded in CFG-equivalent units for every mode (cfg_equivalent: 1 + w for intrinsic) so modes compare.
    # 2-D: energy distance over a grid; images: FID over the sweep's 2^K-step samples (needs a sweep with 2^K).
    if ev.diagnostics and cfg.guidance.mode != "none" and 1 in samples:
        if points:
            grid = ev.guidance_sweep or (CFG_GRID if cfg.guidance.mode != "intrinsic" else
                                         tuple(i * cfg.guidance.w_step for i in
                                               range(int(cfg.guidance.w_max / cfg.guidance.w_step) + 1)))
            m = min(n, EG_SAMPLES)
            best, _ = D.effective_guidance(samples[1][:m], lambda w: generate(net, cfg, data, m, top, w)[1], grid)
            rows.append(D.row("effective_guidance", cfg_equivalent(cfg, best), top, None))
        elif sweep_top:
            one = ImageSet(samples[1], ext.rgb, is_image)
            best, _ = D.effective_guidance(one, sweep_top,
                                           distance=lambda a, b: fid_kid(b, a, ext, kid=False, image=is_image)["fid"])
            rows.append(D.row("effective_guidance", cfg_equivalent(cfg, best), top, None))

    # Sample grids at 1/4/128 steps (those the step budget allows): the first 100 images, one column per class;
    # for 2-D points a scatter of all samples over the held-out points.
    for s in GRID_STEPS:
        if s > top:
            continue
        k = n if points else min(n, 100)
        x = samples[s][:k] if s in samples else generate(net, cfg, data, k, s, g0)[1]
        name = run_dir / "samples" / f"grid_steps_{s}_train_{step:08d}.png"
        if points:
            _save_points(x, data.test_x, name)
        elif is_image:
            save_grid(x, name, nrow=max(data.num_classes, 1) if cfg.data.conditional else 10)

    acc = ext.accuracy if ext else None
    metrics = flat_metrics(rows, acc)
    common = dict(train_step=step, n=n, extractor=ext.name if ext else "points",
                  ref_hash=ref.ref_hash if ref else data.fingerprint[:16], extractor_accuracy=acc)
    rows = [{k: {**r, **common}.get(k) for k in FIELDS} for r in rows]
    write_table(run_dir, rows)
    return rows, metrics


def flat_metrics(rows: list[dict], accuracy: float | None) -> dict[str, float]:
    """{metric}_steps_{N} at the run's guidance, {metric}_steps_{N}_w_{W} for sweep rows, plus extras."""
    out: dict[str, float] = {}
    for r in rows:
        if r["metric"] == "effective_guidance":
            out["effective_guidance"] = r["value"]
        else:
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
