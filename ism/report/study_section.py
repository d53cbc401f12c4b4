"""The study section of a report: state and best trials of an Optuna study, parameter importances, and its plots.

Everything is read from the study (the Optuna storage `ism study` writes); plots come from Optuna's matplotlib
backend, importances from optuna.importance (fANOVA, seeded so a report is reproducible). The whole study report
(write_study_report: objective, trial counts, profile, commands, then this section) goes to reports/studies/<name>/
(embedded profile) or reports/studies/<name>-<profile>/, as report.md and report.pdf.
"""
from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from ism.system import dburl, store
from ism import tracking  # noqa: E402
from ism.conf.profiles import DEFAULT_PROFILE  # noqa: E402
from ism.report.render import Block, Figure, Heading, Para, markdown, render_markdown, render_pdf  # noqa: E402
from ism.report.tables import Table, fmt  # noqa: E402
from ism.study.storage import FINISHED, open_study, storage_url  # noqa: E402

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
                        ["rank", "trial", (study.metric_names or ["objective"])[0], *keys, "duration"], rows,
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


# ----------------------------------------------------------------------------------------------- the study report
# `ism study` writes it when a study finishes; `ism report studies/X.yaml` rebuilds it from the Optuna storage alone.
def report_dir(p, out: str | Path | None = None) -> Path:
    """reports/studies/<name>/ for the embedded (default) profile, reports/studies/<name>-<profile>/ for any other,
    so that a smoke run never overwrites the committed embedded report; `out` wins."""
    if out:
        return Path(out)
    name = store.check_name("study", p.spec.name if p.profile == DEFAULT_PROFILE else f"{p.spec.name}-{p.profile}")
    return store.under("reports", Path("reports") / "studies" / name)


def _shown(x: str | Path) -> str:
    """A path or URI as a report shows it (ism.system.dburl.shown: masked, relative to the working directory, never the
    machine's absolute folders)."""
    return dburl.shown(x)


def rerun_command(p, study: optuna.Study, root: Path | None = None, url: str | None = None,
                  default_root: Path | None = None, default_url: str | None = None) -> str:
    """`ism study` with the options that reproduce this study here (budget and storage only where they differ from
    what the command picks by itself: default_root, and default_url, an Optuna URL from the environment)."""
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    parts = ["ism study", _shown(p.spec.path), "--profile", p.profile]
    if done > p.n_trials:
        parts += ["--n-trials", str(done)]
    default_root = Path(default_root or "runs/study").resolve()
    if root is not None and Path(root).resolve() != default_root:
        parts += ["--storage", _shown(root)]
        if url and url != storage_url(default_url, Path(root).resolve()):
            parts += ["--optuna-storage", _shown(url)]
    elif url and url != storage_url(default_url, default_root):
        parts += ["--optuna-storage", _shown(url)]
    return " ".join(parts)


def report_blocks(p, study: optuna.Study, out_dir: Path, url: str, command: str) -> list[Block]:
    """The whole study report: header, objective, trial counts, profile, commands, then the study section."""
    obj = p.objective
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    done = sum(states[s.name] for s in FINISHED)
    name = (study.metric_names or [obj.label()])[0]
    b: list[Block] = [Heading(f"ism study report: {p.spec.name} (profile {p.profile})", 1),
                      Para(f"Generated {time.strftime('%Y-%m-%d %H:%M')} from the Optuna storage `{_shown(url)}`, study "
                           f"`{study.study_name}`. Every number is read from the study; nothing was rerun.")]
    if p.spec.description:
        b.append(Para(p.spec.description))
    if study.user_attrs.get("ism.fingerprint") not in (None, p.fingerprint()):
        b.append(Para("Note: the spec or its base config has changed since this study ran (e.g. its best values were "
                      "carried into the preset), so rerunning it would start a new study; the trials below ran on the "
                      "base recorded with each trial's MLflow run."))
    b += [Heading("Objective"),
          Para(f"`{name}` ({obj.direction}) = " + " + ".join(f"{w:g} × `{k}`" for k, w in obj.terms.items()) +
               f": {obj.metric} of the slow EMA at {', '.join(map(str, obj.steps))} sampling step"
               f"{'s' * (len(obj.steps) > 1 or obj.steps[0] > 1)}, each from `eval.num_samples` = "
               f"{p.base.eval.num_samples} samples; Optuna metric name `{name}`. Intermediate values (pruning) are the "
               "same objective at the evaluations during training" +
               (f" (every {p.base.eval.every_steps} steps)." if p.base.eval.every_steps else ".")),
          Heading("Trials"),
          Table("trial_states", "Trials by state", ["state", "trials"],
                [[s.lower(), str(n)] for s, n in sorted(states.items())] + [["all", str(len(trials))]],
                bold={(len(states), 0), (len(states), 1)},
                note=f"Budget: {p.n_trials} finished trials (complete, pruned or failed) on this profile; "
                     f"{done} finished."),
          Heading("Profile and search space"),
          Para(f"Profile `{p.profile}`: preset `{p.preset}`, {p.base.run.steps} training steps per trial, "
               f"{p.parallelism} trial(s) at once, resources per trial {dict(p.resources)}; sampler "
               f"{dict(p.sampler) or {'type': 'tpe'}}, pruner {dict(p.pruner) or {'type': 'none'}}."
               + "".join(f" {n}" if n.endswith(".") else f" {n}." for n in p.notes)),
          Table("space", "Search space", ["config key", "distribution"], [[x.key, x.describe()] for x in p.space]),
          Heading("Commands"),
          Para(f"Rerun or continue the study (finished trials are kept; only missing ones run): `{command}`."),
          Para(f"Rebuild this report from the storage: `ism report {_shown(p.spec.path)} --profile {p.profile}`; "
               f"export the best trial as a config: `{command} --export-best`.")]
    return b + study_blocks(study, out_dir)


@dataclass
class StudyReport:
    """What write_study_report produced."""
    out_dir: Path
    markdown: Path
    pdf: Path
    figures: list[Path]
    logged_to: str | None = None


def write_study_report(p, url: str, out: str | Path | None = None, root: Path | None = None,
                       tracking_uri: str | None = None, study: optuna.Study | None = None,
                       default_root: Path | None = None, default_url: str | None = None) -> StudyReport:
    """Read the plan's study from the Optuna storage and write report.md, report.pdf, figures/ and tables/trials.csv
    (report_dir(p, out)); with tracking_uri, also log the folder on the study's MLflow parent run there, if any."""
    study = study or open_study(p, url, create=False, strict=False)
    out_dir = report_dir(p, out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub, ext in (("figures", ".png"), ("tables", ".csv")):  # what a previous report here wrote
        if (out_dir / sub).is_dir():
            for f in (out_dir / sub).iterdir():
                if f.suffix == ext:
                    f.unlink()
    blocks = report_blocks(p, study, out_dir, url, rerun_command(p, study, root, url, default_root, default_url))
    md = render_markdown(blocks, out_dir)
    pdf = render_pdf(blocks, out_dir / "report.pdf", f"ism study report: {p.study_name}")
    (out_dir / "tables").mkdir(exist_ok=True)
    study.trials_dataframe(attrs=("number", "state", "value", "params", "duration")).to_csv(
        out_dir / "tables" / "trials.csv", index=False)
    logged = None
    if tracking_uri:
        prior = study.user_attrs.get("ism.mlflow_parent") or {}
        parent = prior.get(dburl.masked(tracking_uri), prior.get(tracking_uri))
        if parent:
            tracking.log_folder(parent, out_dir, "report", tracking_uri)
            logged = parent
    return StudyReport(out_dir, md, pdf, [x.path for x in blocks if isinstance(x, Figure) and x.path], logged)
