"""The report's figures (matplotlib, Agg backend, PNG). Each returns its path, or a one-line reason it has no data."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ism.report.ci import mean_ci, positive  # noqa: E402
from ism.report.load import Sweep, distinct, label  # noqa: E402
from ism.report.tables import center_ci, log_metric  # noqa: E402

DPI = 110
GRID_ROWS = 2          # sample-grid rows shown per variant and step count (one sample per class and row)


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _curve(sw: Sweep, metric: str, v: str, steps: list[int], log: bool = False):
    """(x, mean, lo, hi) of a variant over step counts, NaN where unmeasured; log: geometric mean, log interval."""
    ivs = [center_ci(sw.values(metric, s).get(v, {}).values(), log) for s in steps]
    return (np.array(steps, float), np.array([i.mean for i in ivs]), np.array([i.lo for i in ivs]),
            np.array([i.hi for i in ivs]))


def _seed_points(ax, xs, per_x: list[dict[int, float]], color, horizontal: bool = False) -> None:
    """Each seed's value as a small marker beside the mean: what the mean and its interval rest on."""
    for x, vals in zip(xs, per_x):
        if vals:
            v = np.array(list(vals.values()), float)
            pos = np.full(len(v), x, float)
            ax.plot(*((v, pos) if horizontal else (pos, v)), ls="none", marker="x", ms=4, mew=0.9, color=color,
                    alpha=0.9, zorder=3)


def _set_log(ax, axis: str = "y") -> None:
    """A log axis with plain-number tick labels (FID 10, 20, 50 rather than 10^1)."""
    from matplotlib.ticker import LogFormatter
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    target.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def panels(sw: Sweep) -> list[tuple[str, list[str]]]:
    """Variant sets to plot side by side: the spec's groups when it has some (a 16-line plot is unreadable)."""
    groups = [(name, [v for v in members if v in sw.variants]) for name, members in sw.plan.get("groups", {}).items()]
    groups = [(n, m) for n, m in groups if m]
    return groups if groups and len(sw.variants) > 6 else [("all variants", list(sw.variants))]


def metric_vs_steps(sw: Sweep, metric: str, path: Path) -> Path | str:
    """The metric versus sampling steps (log2 axis), one line per variant with its 95 % CI band, a panel per group.

    A strictly positive metric (FID) is drawn on a log y-axis with the geometric mean and the log-scale interval
    (a band never below 0); each seed's value is drawn as a point beside the mean.
    """
    steps = sw.steps_of(metric)
    if not steps:
        return f"no {metric} per step count in this sweep"
    log = log_metric(sw, metric)
    groups = panels(sw)
    color = dict(zip(sw.variants, _colors(len(sw.variants))))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.2),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, (name, members) in zip(axes[0], groups):
        for v in members:
            x, y, lo, hi = _curve(sw, metric, v, steps, log)
            if np.isfinite(y).any():
                ax.plot(x, y, "o-", color=color[v], label=v, ms=3, lw=1.3)
                ok = np.isfinite(lo)
                if ok.any():
                    ax.fill_between(x[ok], lo[ok], hi[ok], color=color[v], alpha=0.15, lw=0)
                _seed_points(ax, x, [sw.values(metric, s).get(v, {}) for s in steps], color[v])
        if log:
            _set_log(ax, "y")
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.set_xlabel("sampling steps")
        ax.set_title(name if len(groups) > 1 else "")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a panel whose variants have no finished seed draws no line
            ax.legend(fontsize=7, loc="upper right")
    axes[0][0].set_ylabel(f"{metric.upper()} (lower is better{', log scale' if log else ''})")
    fig.suptitle(f"{metric.upper()} versus sampling steps: " + (
        "geometric mean over seeds, 95 % t-interval of log values" if log else "mean over seeds, 95 % t-interval bands")
        + "; × = single seeds", fontsize=10)
    return _save(fig, path)


def ablation_bars(sw: Sweep, metric: str, path: Path, wanted=(1, 4, 128)) -> Path | str:
    """Dot-and-interval plot per variant at 1, 4 and 128 steps (those measured): the mean as a dot, its 95 % interval as
    a line, each seed as a cross, the baseline dashed. Dots, not bars: on the log axis a strictly positive metric
    (FID) needs, a bar's length would mean nothing. One row per trial (aliases named together)."""
    have = sw.steps_of(metric)
    steps = [s for s in wanted if s in have]
    if not steps:
        return f"{metric} was not measured at {', '.join(map(str, wanted))} steps"
    names = distinct(sw)
    n = len(names)
    log = log_metric(sw, metric)
    fig, axes = plt.subplots(1, len(steps), figsize=(4.2 * len(steps), 0.32 * n + 1.6),
                             squeeze=False, sharey=True, layout="constrained")
    ys = np.arange(n)[::-1]
    colors = _colors(n)
    for ax, s in zip(axes[0], steps):
        per = [sw.values(metric, s).get(v, {}) for v in names]
        ivs = [center_ci(x.values(), log) for x in per]
        means = np.array([i.mean for i in ivs])
        lo = np.array([i.lo if i.has_ci else i.mean for i in ivs])
        hi = np.array([i.hi if i.has_ci else i.mean for i in ivs])
        for y, m, a_, b_, c in zip(ys, means, lo, hi, colors):
            if math.isfinite(m):
                ax.plot([a_, b_], [y, y], color=c, lw=2.2, solid_capstyle="butt")
                ax.plot([m], [y], "o", color=c, ms=5, mec="k", mew=0.5, zorder=3)
        for y, d in zip(ys, per):
            _seed_points(ax, [y], [d], "k", horizontal=True)
        if sw.baseline in names:
            base = means[names.index(sw.baseline)]
            if math.isfinite(base):
                ax.axvline(base, color="k", ls="--", lw=0.8)
        if log:
            _set_log(ax, "x")
        ax.set_title(f"{s} step{'s' * (s > 1)}")
        ax.set_xlabel(metric.upper() + (" (log scale)" if log else ""))
        ax.grid(axis="x", alpha=0.3, which="both" if log else "major")
        ax.grid(axis="y", alpha=0.15)
    axes[0][0].set_yticks(ys, [label(sw, v) for v in names], fontsize=7)
    fig.suptitle(f"{metric.upper()} per variant, " + ("geometric mean, 95 % log-scale interval" if log else
                 "mean, 95 % t-interval") + f" (dashed: baseline '{sw.baseline}'; × = single seeds)", fontsize=10)
    return _save(fig, path)


def guidance_sweep(sw: Sweep, metric: str, path: Path) -> Path | str:
    """The metric versus the guidance value w at each sweep step count, per variant, with CI bands (log y-axis and
    log-scale interval for a strictly positive metric; each seed as a point)."""
    df = sw.scores[(sw.scores["metric"] == metric) & sw.scores["sweep"]] if len(sw.scores) else sw.scores
    if not len(df):
        return "no guidance sweep in this spec (eval.guidance_sweep is empty)"
    steps = sorted(int(s) for s in df["steps"].unique())
    log = positive(df["value"])
    fig, axes = plt.subplots(1, len(steps), figsize=(4.5 * len(steps), 3.8), squeeze=False, layout="constrained")
    names = [v for v in sw.variants if v in set(df["variant"])]
    for ax, s in zip(axes[0], steps):
        for v, c in zip(names, _colors(len(names))):
            ws = sorted(df[(df["variant"] == v) & (df["steps"] == s)]["guidance"].unique())
            per = [sw.values(metric, s, w, sweep=True).get(v, {}) for w in ws]
            ivs = [center_ci(x.values(), log) for x in per]
            y, lo, hi = (np.array([getattr(i, a) for i in ivs]) for a in ("mean", "lo", "hi"))
            ax.plot(ws, y, "o-", color=c, label=v, ms=3)
            ok = np.isfinite(lo)
            if ok.any():
                ax.fill_between(np.array(ws)[ok], lo[ok], hi[ok], color=c, alpha=0.15, lw=0)
            _seed_points(ax, ws, per, c)
        if log:
            _set_log(ax, "y")
        ax.set_title(f"{s} step{'s' * (s > 1)}")
        ax.set_xlabel("guidance w (or CFG scale)")
        ax.set_ylabel(metric.upper() + (" (log scale)" if log else ""))
        ax.grid(alpha=0.3, which="both" if log else "major")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return _save(fig, path)


def grid_tiles(png: Path, resolution: int) -> np.ndarray:
    """Images [N, C, H, W] in [-1, 1] cut back out of a torchvision grid PNG (padding 1 around every tile)."""
    from PIL import Image
    im = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64) / 127.5 - 1.0
    step = resolution + 1
    rows, cols = (im.shape[0] - 1) // step, (im.shape[1] - 1) // step
    tiles = [im[1 + r * step:1 + r * step + resolution, 1 + c * step:1 + c * step + resolution]
             for r in range(rows) for c in range(cols)]
    x = np.stack(tiles).transpose(0, 3, 1, 2)
    gray = np.allclose(x[:, 0], x[:, 1]) and np.allclose(x[:, 1], x[:, 2])
    return x[:, :1] if gray else x  # grayscale grids are saved as 3 equal channels


def spectra(sw: Sweep, grids: dict[str, dict[int, Path]], path: Path) -> Path | str:
    """Radially averaged power spectra of each variant's samples (from its sample grids) at the grid step counts."""
    import torch
    from ism.evaluation.diagnostics import radial_power_spectrum
    if not grids:
        return "no sample grids were logged as artifacts, so no spectra"
    if all(_is_points(sw, v) for v in grids):
        return "no spectra: the samples are 2-D points, not images"
    res = {v: int(sw.params.get(sw.representative(v) or "", {}).get("data.resolution", 0) or 0) for v in grids}
    steps = sorted({s for g in grids.values() for s in g})
    fig, axes = plt.subplots(1, len(steps), figsize=(4.5 * len(steps), 3.8),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, s in zip(axes[0], steps):
        for v, c in zip(sw.variants, _colors(len(sw.variants))):
            if s in grids.get(v, {}) and res.get(v):
                f, p = radial_power_spectrum(torch.from_numpy(grid_tiles(grids[v][s], res[v])))
                ax.semilogy(f[1:], p[1:], color=c, label=v, lw=1.2)
        ax.set_title(f"{s} step{'s' * (s > 1)}")
        ax.set_xlabel("radial frequency (cycles/pixel)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("power")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("Radial power spectra of the logged sample grids (same noise for every variant)")
    return _save(fig, path)


def straightness_gap(sw: Sweep, path: Path) -> Path | str:
    """Straightness (path/chord) of the many-step trajectories and the self-consistency gap versus steps."""
    st, gap = sw.steps_of("straightness"), sw.steps_of("sc_gap")
    if not st and not gap:
        return "straightness and sc_gap were not measured (eval.diagnostics off)"
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.3 * len(sw.variants) + 2.4), layout="constrained")
    n = len(sw.variants)
    if st:
        s = st[-1]
        ivs = [mean_ci(list(sw.values("straightness", s).get(v, {}).values())) for v in sw.variants]
        ys = np.arange(n)[::-1]
        axes[0].barh(ys, np.nan_to_num([i.mean for i in ivs]), xerr=[i.half if i.has_ci else 0 for i in ivs],
                     color=_colors(n), capsize=2)
        axes[0].axvline(1.0, color="k", lw=0.8)
        axes[0].set_yticks(ys, sw.variants, fontsize=8)
        lo = np.nanmin([i.mean for i in ivs] + [1.0])
        axes[0].set_xlim(left=max(0.0, lo - 0.05 * abs(lo)))
        axes[0].set_xlabel(f"straightness @{s} steps (path/chord, 1 = straight)")
    else:
        axes[0].text(0.5, 0.5, "straightness not measured", ha="center", transform=axes[0].transAxes)
    if gap:
        for v, c in zip(sw.variants, _colors(n)):
            x, y, lo_, hi = _curve(sw, "sc_gap", v, gap)
            axes[1].plot(x, y, "o-", color=c, label=v, ms=3)
            ok = np.isfinite(lo_)
            if ok.any():
                axes[1].fill_between(x[ok], lo_[ok], hi[ok], color=c, alpha=0.15, lw=0)
        axes[1].set_xscale("log", base=2)
        axes[1].set_xticks(gap, [str(s) for s in gap])
        axes[1].set_xlabel("sampling steps")
        axes[1].set_ylabel("sc_gap to the most-step sample")
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    else:
        axes[1].text(0.5, 0.5, "sc_gap not measured", ha="center", transform=axes[1].transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def losses(sw: Sweep, hist: pd.DataFrame, path: Path) -> Path | str:
    """Training loss per row kind (flow matching, self-consistency, guidance) over steps, mean over seeds."""
    kinds = [k for k in ("loss_fm", "loss_sc", "loss_guid") if len(hist) and (hist["key"] == k).any()]
    if not kinds:
        return "no per-kind training losses (loss_fm / loss_sc / loss_guid) were logged"
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.8), squeeze=False, layout="constrained")
    for ax, k in zip(axes[0], kinds):
        h = hist[hist["key"] == k]
        for v, c in zip(sw.variants, _colors(len(sw.variants))):
            g = h[h["variant"] == v].groupby("step")["value"]
            if len(g):
                m = g.mean()
                ax.plot(m.index, m.values, color=c, label=v, lw=1.1)
                ax.fill_between(m.index, g.min().values, g.max().values, color=c, alpha=0.12, lw=0)
        ax.set_yscale("log")
        ax.set_title({"loss_fm": "flow matching rows", "loss_sc": "self-consistency rows",
                      "loss_guid": "guidance rows"}[k])
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
    handles = {}
    for ax in axes[0]:  # guidance rows exist only for intrinsic variants: collect the legend from every panel
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    axes[0][-1].legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("Training losses per row kind (mean over seeds; band = min..max)")
    return _save(fig, path)


def _is_points(sw: Sweep, v: str) -> bool:
    return sw.params.get(sw.representative(v) or "", {}).get("data.name") == "toy2d"


def grid_gaps(sw: Sweep, grids: dict[str, dict[int, Path]], steps: tuple[int, ...] = (1, 4, 128)) -> str:
    """'no sample grid at 4 steps was logged' for the step counts no variant has a grid at ('' when none is missing)."""
    gone = [s for s in steps if not any(s in grids.get(v, {}) for v in sw.variants)]
    return "; ".join(f"no sample grid at {s} step{'s' * (s > 1)} was logged" for s in gone)


def samples(sw: Sweep, grids: dict[str, dict[int, Path]], path: Path, steps: tuple[int, ...] = (1, 4, 128),
            rows_shown: int = GRID_ROWS) -> Path | str:
    """One figure of samples: a row per variant (aliases once), a column per step count, the first rows of each
    logged grid (the same eval noise and labels everywhere), so the eye compares across both at once."""
    from PIL import Image
    cols = [s for s in steps if any(s in grids.get(v, {}) for v in sw.variants)]
    names = [v for v in distinct(sw) if any(s in grids.get(v, {}) for s in cols)]
    if not names:
        return "no sample grid was logged at " + ", ".join(f"{s} step{'s' * (s > 1)}" for s in steps)
    points = all(_is_points(sw, v) for v in names)  # 2-D points: whole scatter plots, not image rows to crop
    fig, axes = plt.subplots(len(names), len(cols), squeeze=False,
                             figsize=(3.4 * len(cols) + 1.2, (2.6 if points else 0.36 * rows_shown + 0.08) * len(names) + 0.7))
    fig.subplots_adjust(hspace=0.08, wspace=0.04, left=0.14)
    for i, v in enumerate(names):
        res = int(sw.params.get(sw.representative(v) or "", {}).get("data.resolution", 0) or 0)
        for j, s in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if s in grids.get(v, {}):
                im = np.asarray(Image.open(grids[v][s]).convert("RGB"))
                ax.imshow(im[: 1 + rows_shown * (res + 1)] if res and not points else im, interpolation="nearest")
            if i == 0:
                ax.set_title(f"{s} step{'s' * (s > 1)}", fontsize=9)
            if j == 0:
                ax.set_ylabel(label(sw, v), rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle("Samples (same noise and labels for every variant)", fontsize=10)
    return _save(fig, path)
