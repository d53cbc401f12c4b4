"""The study section of a report: state and best trials of an Optuna study, parameter importances, and its plots.

Everything is read from the study (the Optuna storage `ism study` writes); plots come from Optuna's matplotlib
backend, importances from optuna.importance (fANOVA, seeded so a report is reproducible).
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from datetime import timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from ism.report.render import Block, Figure, Heading, Para, markdown  # noqa: E402
from ism.report.tables import Table, fmt  # noqa: E402

DPI = 110
TOP = 5


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def _value(v) -> str:
    return fmt(v) if isinstance(v, float) else str(v)


def _duration(t: optuna.trial.FrozenTrial) -> str:
    d = t.duration
    return "–" if d is None else str(timedelta(seconds=round(d.total_seconds())))


def _plot(kind: str, study: optuna.Study, path: Path, **kw) -> Path | None:
    """One of Optuna's matplotlib plots saved to path; None when the study has nothing to draw."""
    from optuna.visualization import matplotlib as om
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), plt.rc_context():  # Optuna switches to its own style; keep the report's
        warnings.simplefilter("ignore")                # the matplotlib backend is marked experimental
        ax = getattr(om, kind)(study, **kw)
        axes = list(ax.flat) if hasattr(ax, "flat") else [ax]
        if not axes or not any(a.has_data() for a in axes):
            plt.close(axes[0].figure if axes else "all")
            return None
        fig = axes[0].figure
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
    return path


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA parameter importances over completed trials (seeded); {} when they cannot be computed yet."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:  # Optuna returns equal shares for a single trial, which would read as a finding
        return {}
    try:
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError):  # fewer than two completed trials, or no parameter varies
        return {}


def study_blocks(study: optuna.Study, out_dir: str | Path, top: int = TOP) -> list[Block]:
    """The section as report blocks (headings, paragraphs, tables, figures under out_dir/figures)."""
    out_dir = Path(out_dir)
    figdir = out_dir / "figures"
    slug = _slug(study.study_name)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    attrs = study.user_attrs
    direction = study.direction.name.lower()
    objective = attrs.get("ism.objective") or direction
    blocks: list[Block] = [Heading(f"Study {study.study_name}", 2)]
    summary = (f"Objective: {objective}. {len(trials)} trials: " +
               ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + ".")
    if attrs.get("ism.space"):
        summary += " Space: " + "; ".join(f"`{k}` {v}" for k, v in attrs["ism.space"].items()) + "."
    blocks.append(Para(summary))
    if not complete:
        blocks.append(Para("No trial has completed yet, so there is no best trial, importance or history to show."))
        return blocks
    best = sorted(complete, key=lambda t: t.value, reverse=direction == "maximize")[:top]
    keys = sorted({k for t in best for k in t.params})
    rows = [[str(i + 1), f"#{t.number}", fmt(t.value, 5), *[_value(t.params.get(k, "–")) for k in keys], _duration(t)]
            for i, t in enumerate(best)]
    blocks.append(Table(f"{slug}-best", f"Best trials of {study.study_name} ({direction})",
                        ["rank", "trial", "objective", *keys, "duration"], rows,
                        bold={(0, j) for j in range(3 + len(keys))},
                        note=f"Top {len(best)} of {len(complete)} completed trials; pruned and failed trials excluded."))
    imp = importances(study)
    if imp:
        blocks.append(Table(f"{slug}-importance", "Parameter importances (fANOVA)", ["parameter", "importance"],
                            [[k, fmt(v, 3)] for k, v in imp.items()],
                            note=f"optuna.importance fANOVA (seed 0) over {len(complete)} completed trials; shares sum "
                                 "to 1" + ("; few trials, indicative only." if len(complete) < 10 else ".")))
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if pruned:
        at = Counter(t.last_step for t in pruned if t.last_step is not None)
        blocks.append(Para(f"{len(pruned)} trial(s) pruned on intermediate evaluations, at training step " +
                           ", ".join(f"{s} ({n})" for s, n in sorted(at.items())) + "."))
    figs = [("Optimisation history", "plot_optimization_history", {}, "no completed trial"),
            ("Parameter importances", "plot_param_importances", {}, "needs two completed trials with varying parameters"),
            ("Slices: objective against each parameter", "plot_slice", {}, "no completed trial"),
            ("Parallel coordinates", "plot_parallel_coordinate", {}, "no completed trial"),
            ("Intermediate objective during training (pruning)", "plot_intermediate_values", {},
             "no intermediate evaluations (pruner.every_steps unset)")]
    for title, kind, kw, reason in figs:
        if kind == "plot_param_importances" and not imp:
            blocks.append(Figure(title, None, reason))
            continue
        if kind == "plot_intermediate_values" and not any(t.intermediate_values for t in trials):
            blocks.append(Figure(title, None, reason))
            continue
        path = _plot(kind, study, figdir / f"{slug}-{kind.removeprefix('plot_')}.png", **kw)
        blocks.append(Figure(title, path, "" if path else reason))
    return blocks


def render_study_section(study: optuna.Study, out_dir: str | Path) -> tuple[str, list[Path]]:
    """(Markdown of the section with figure links relative to out_dir, the figure files written)."""
    out_dir = Path(out_dir)
    blocks = study_blocks(study, out_dir)
    return markdown(blocks, out_dir), [b.path for b in blocks if isinstance(b, Figure) and b.path]
