"""The report of a sweep's results read from MLflow -> tables, figures, claims check -> reports/NAME/report.{md,pdf}.

No number in a report is typed by hand: every value comes from the MLflow store (runs, metrics, artifacts) through
ism.report.load; the only constants are the paper's reference numbers in the cumulative table, labelled as such.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ism.system import dburl, store
from ism import tracking
from ism.conf.profiles import DEFAULT_PROFILE
from ism.report import compounding as C
from ism.report import fairness as FR
from ism.report import figures as F
from ism.report import load as L
from ism.report import sequential as SQ
from ism.report.claims import Result, claims_table
from ism.report.flow_claims import flow_results
from ism.report.method_claims import method_results, step_time_table, transfer_table
from ism.report.meta import metadata_table
from ism.report.render import Block, Figure, Heading, Para, latex_table, render_markdown, render_pdf
from ism.report.tables import (Table, center_ci, compare_cell, compare_ci, config_diff_table, cumulative_table,
                               delta_table, diagnostics_table, fmt, group_tables, log_metric, metric_table,
                               missing_table, sweep_table)


APPENDIX = "appendix.pdf"  # the PDF's appendix, beside report.pdf


@dataclass
class Report:
    """What build_report produced."""
    out_dir: Path
    markdown: Path
    pdf: Path
    sweep: L.Sweep
    tables: dict[str, Table]
    claims: list[Result]
    figures: dict[str, Path | str] = field(default_factory=dict)
    logged_to: str | None = None


def _summary(sw: L.Sweep, metric: str) -> list[str]:
    """Headline sentences: trials finished, best variant at the fewest and the most steps."""
    n_done = sw.finished()["mlflow_id"].nunique()
    n_plan = len(sw.plan.get("trials", [])) or sw.trials["mlflow_id"].nunique()
    lines = FR.headline(sw, metric)  # the comparison first; the best variant after
    if n_done == 0 and SQ.exhausted(sw):
        lines.append(f"**Not run: the budget ({(sw.plan.get('adaptive') or {}).get('budget')}) was spent before this "
                     "spec's turn** (`make ablation-all` spends one budget over the specs in order; rerun with a "
                     "larger BUDGET to add it: finished trials are kept). Earlier reports of this spec, made under "
                     "earlier defaults, are in the repository's history (`git log -- reports/" + sw.spec + "`).")
    lines += [f"**{n_done} of {n_plan} trials finished** ({len(sw.variants)} variants × seeds {sw.seeds}); "
              f"baseline: `{sw.baseline}`."]
    steps = sw.steps_of(metric)
    log = log_metric(sw, metric)
    bare, one = set(FR.untuned(sw)), set(L.distinct(sw))
    full = FR.full_method(sw)
    for s in sorted({steps[0], steps[-1]}) if steps else []:
        per = sw.values(metric, s)
        # A pick among the reported numbers is biased low (the winner's curse), and an arm with fewer seeds or none
        # of the tuning has a wider spread to win by: only tuned arms with at least the baseline's seeds compete,
        # each trial once (aliases share one).
        need = len(per.get(sw.baseline, {}))
        cand = {v: x for v, x in per.items() if v in one and v not in bare and len(x) >= need}
        vals = {v: center_ci(x.values(), log) for v, x in cand.items()}
        best = min(vals, key=lambda v: vals[v].mean) if vals else None
        pair = {sw.baseline, full, *L.aliases(sw, full)} if full is not None else set()
        if best is None or best in pair - {sw.baseline} or set(vals) <= pair:
            continue  # the headline above already gives the full method against the baseline
        if len(vals) > 1:
            base = vals.get(sw.baseline)
            vs = ""
            if base and best != sw.baseline:
                c = compare_ci(per[sw.baseline], per[best], log)
                vs = (f"; {'ratio' if log else 'difference'} {compare_cell(c, log)}"
                      + (f", excludes {'1' if log else '0'}" if c.excludes(1.0 if log else 0.0) else ""))
            lines.append(f"Lowest {metric.upper()} at {s} step{'s' * (s > 1)} among the {len(vals)} {'tuned ' * bool(sw.plan.get('tuning'))}variants "
                         f"with at least the baseline's {need} seed{'s' * (need != 1)}: `{best}` {fmt(vals[best].mean)}"
                         + (f" (baseline {fmt(base.mean)}{vs})" if base else "")
                         + "; picked on these same numbers, so it flatters the winner.")
    if steps and log:
        lines.append(f"{metric.upper()} values are geometric means over seeds; their intervals and the ratios to the "
                     f"baseline are computed on log({metric.upper()}), so they stay above 0.")
    return lines


def _clean(out: Path) -> None:
    """Remove the figures and tables of a previous report in the same folder (only the kinds we write)."""
    for sub, exts in (("figures", {".png"}), ("tables", {".csv", ".tex"})):  # .tex too: a table this sweep no
        d = out / sub                                                            # longer has must not linger
        if d.is_dir():
            for p in d.iterdir():
                if p.suffix in exts:
                    p.unlink()


def default_out(spec: str, profile: str | None) -> Path:
    """reports/<spec> for the embedded profile (the committed reports), reports/<spec>-<profile> for any other, so a
    smoke or GPU sweep's report never overwrites the committed embedded one."""
    name = store.check_name("spec", spec if profile in (None, DEFAULT_PROFILE) else f"{spec}-{profile}")
    return store.under("reports", Path("reports") / name)


def build_report(target: str, tracking_uri: str | None = None, out: str | Path | None = None,
                 profile: str | None = None, sweep: str | None = None, log: bool = True) -> Report:
    """Read a sweep from MLflow and write report.md, report.pdf, figures/ and tables/ (and log them on the parent)."""
    with tempfile.TemporaryDirectory(prefix="ism-report-") as tmp:
        work = Path(tmp)
        sw = L.load_sweep(target, tracking_uri, profile, sweep, workdir=work)
        out_dir = Path(out or default_out(sw.spec, sw.plan.get("profile")))
        out_dir.mkdir(parents=True, exist_ok=True)
        _clean(out_dir)
        figdir = out_dir / "figures"
        hist = L.histories(sw)
        files = L.trial_files(sw, work)
        grids = L.sample_grids(sw, work)
        m1, m2 = sw.primary
        tables: dict[str, Table] = {}
        claims, results = claims_table(sw, flow_results(sw) + method_results(sw))
        for t in (metadata_table(sw, files, hist), claims, metric_table(sw, m1, f"{m1.upper()} per variant and step count"),
                  metric_table(sw, m2, f"{m2.upper()} per variant and step count"), delta_table(sw, m1),
                  delta_table(sw, m2), cumulative_table(sw, m1), diagnostics_table(sw), sweep_table(sw, m1),
                  config_diff_table(sw), missing_table(sw), C.compounding_table(sw), transfer_table(sw, m1),
                  step_time_table(sw, m1), *group_tables(sw, m1), FR.tuning_table(sw),
                  FR.selected_table(sw, m1),
                  SQ.sequential_table(sw, m1, budget_left=not SQ.exhausted(sw)), SQ.machine_table(sw)):
            if t is not None:
                tables[t.name] = t
        figs: dict[str, Path | str] = {
            "metric_vs_steps": F.metric_vs_steps(sw, m1, figdir / f"{m1}_vs_steps.png"),
            "metric2_vs_steps": F.metric_vs_steps(sw, m2, figdir / f"{m2}_vs_steps.png"),
            "ablation_bars": F.ablation_bars(sw, m1, figdir / "ablation_bars.png"),
            "guidance_sweep": F.guidance_sweep(sw, m1, figdir / "guidance_sweep.png"),
            "spectra": F.spectra(sw, grids, figdir / "spectra.png"),
            "straightness_gap": F.straightness_gap(sw, figdir / "straightness_sc_gap.png"),
            "losses": F.losses(sw, hist, figdir / "losses.png"),
            "compounding": C.figure(sw, figdir / "effective_guidance_vs_steps.png"),
            "guidance_response": FR.guidance_response(sw, figdir / "guidance_response.png"),
        }
        figs["samples"] = F.samples(sw, grids, figdir / "samples.png")
        gaps = F.grid_gaps(sw, grids)
        body, appendix = _blocks(sw, tables, figs, m1, gaps)
        md = render_markdown(body + appendix, out_dir)
        # The PDF reads like a paper's ablation section; its appendix (diagnostics, sweeps, losses, configuration,
        # metadata) is a second file, so the first one stays about ten pages (issue 25).
        pointer = Para(f"Appendix (diagnostics, compounding guidance, the guidance sweep, losses, configuration and "
                       f"run metadata): `{APPENDIX}` beside this file.")
        pdf = render_pdf(body[:2] + [pointer] + body[2:], out_dir / "report.pdf", f"ism report: {sw.spec}")
        render_pdf(appendix, out_dir / APPENDIX, f"ism report: {sw.spec}, appendix")
        (out_dir / "tables").mkdir(exist_ok=True)
        for name, t in tables.items():
            if t.data is not None:
                t.data.to_csv(out_dir / "tables" / f"{name}.csv", index=False)
            (out_dir / "tables" / f"{name}.tex").write_text(latex_table(t))
        tidy_scores(sw).to_csv(out_dir / "tables" / "scores_long.csv", index=False)
        logged = None
        if log:
            tracking.log_folder(sw.parent["mlflow_id"], out_dir, "report", sw.uri)
            logged = sw.parent["mlflow_id"]
        return Report(out_dir, md, pdf, sw, tables, results, figs, logged)


def tidy_scores(sw: L.Sweep) -> pd.DataFrame:
    """Every measured value, one row per variant x seed x steps x metric (x guidance for sweeps): the long format
    pandas, R and seaborn read directly."""
    cols = ["variant", "seed", "metric", "steps", "guidance", "guidance_sweep", "value", "mlflow_run_id"]
    if not len(sw.scores):
        return pd.DataFrame(columns=cols)
    df = sw.scores.rename(columns={"sweep": "guidance_sweep", "mlflow_id": "mlflow_run_id"})
    return df[cols].sort_values(["metric", "variant", "seed", "guidance_sweep", "steps", "guidance"],
                                na_position="first").reset_index(drop=True)


def _fig(figs: dict, key: str, title: str) -> Figure:
    v = figs[key]
    return Figure(title, v, "", full_page=key == "samples") if isinstance(v, Path) else Figure(title, None, v)


# Over 60 lines on purpose: the report's page order, top to bottom; each block comes from a helper, so this is the table of
# contents, read in one place.
def _blocks(sw: L.Sweep, tables: dict[str, Table], figs: dict, m1: str, gaps: str = "") -> tuple[list[Block], list[Block]]:
    """The report's layout: (the body, read as a paper's ablation section; the appendix)."""
    t = tables.get
    prof = sw.parent["tags"].get("ism.profile", "?")
    b: list[Block] = [Heading(f"ism report: {sw.spec} (profile {prof})", 1),
                      Para(f"Generated {time.strftime('%Y-%m-%d %H:%M')} from the MLflow store "
                           f"`{dburl.shown(sw.uri)}`, experiment "
                           f"`{sw.experiment}`, sweep run `{sw.parent['mlflow_id']}`. Every number is read from "
                           "MLflow; intervals are 95 % t-intervals over seeds, for a strictly positive metric (FID) "
                           "computed on log values: geometric means [lo, hi] and ratios to the baseline, never "
                           "below 0."),
                      Heading("Summary")]
    if prof == "smoke":
        b.insert(2, Para("**Smoke profile: a plumbing check, not an experiment.** Its trials train for a handful of "
                         "steps on a few hundred images, so FIDs in the thousands mean untrained samples; nothing "
                         "below says anything about the methods. Real numbers: the embedded or GPU profiles."))
    b += [Para(x) for x in _summary(sw, m1)]
    if t("cumulative"):  # the paper's own table first, where the reader compares with it
        b += [Heading("Cumulative ablation (the paper's order)"), tables["cumulative"]]
    if t("tuning"):
        b += [Heading("Tuning"), tables["tuning"]]
    b.append(Heading("Missing and failed trials"))
    b.append(t("missing") or Para("None: every planned trial finished with its metrics."))
    b += [Heading("Claims check"), tables["claims"]]
    if t(f"{m1}_sequential") or t("machine"):  # the adaptive-seed verdicts and what the sweep spent (issue 26)
        b += [Heading("Seeds, decisions and the machine")] + [Para(x) for x in SQ.adaptive_summary(sw)]
        b += [x for x in (t(f"{m1}_sequential"), t("machine")) if x]
    if t("transfer") or t("step_time"):
        b.append(Heading("Few-step methods: transfer of iSM's fixes and training cost" if t("transfer") else
                         "Training cost per step"))
        b += [x for x in (t("transfer"), t("step_time")) if x]
    b.append(Heading(f"{m1.upper()} and {sw.primary[1].upper()} versus sampling steps"))
    b += [x for x in (t(f"{m1}_by_steps"), t(f"{sw.primary[1]}_by_steps")) if x] or [Para("No FID/KID was logged.")]
    scale = lambda m: "log y axis, " if log_metric(sw, m) else ""  # noqa: E731
    b += [_fig(figs, "metric_vs_steps", f"{m1.upper()} versus steps (log2 x axis, {scale(m1)}95 % CI bands)"),
          _fig(figs, "metric2_vs_steps", f"{sw.primary[1].upper()} versus steps (log2 x axis, "
               f"{scale(sw.primary[1])}95 % CI bands)"),
          _fig(figs, "ablation_bars", f"Each variant at 1, 4 and 128 steps: mean and 95 % interval ({m1.upper()}"
               + (", log x axis)" if log_metric(sw, m1) else ")"))]
    b.append(Heading("Ratios and differences to the baseline"))
    b += [x for m in (m1, sw.primary[1]) for x in (t(f"{m}_ratio"), t(f"{m}_delta")) if x] \
        or [Para("No variant besides the baseline.")]
    if not t("cumulative"):  # said where the reader of a paper-style report looks for it
        b += [Heading("Cumulative ablation"),
              Para("This spec has no cumulative-order group (a group whose name contains 'cumul').")]
    b += [Heading("Samples"), _fig(figs, "samples", "Samples at 1, 4 and 128 steps" + (f" ({gaps})" if gaps else ""))]
    body, b = b, [Heading("Appendix", 1)]
    if t("compounding"):
        b += [Heading("Compounding guidance (Prop. 1)")] + [Para(x) for x in C.summary(sw)]
        b += [tables["compounding"], _fig(figs, "compounding", "Effective CFG-equivalent scale versus sampling steps "
                                          "(log2 axes; dashed: each mode's prediction)")]
    groups = [x for k, x in tables.items() if k.startswith("group_")]
    if groups:
        b += [Heading("Other groups of the spec")] + groups
    b.append(Heading("Diagnostics"))
    b.append(t("diagnostics") or Para("No diagnostics were logged (eval.diagnostics off)."))
    b += [_fig(figs, "straightness_gap", "Straightness and self-consistency gap"),
          _fig(figs, "spectra", "Radial power spectra")]
    b.append(Heading("Guidance sweep"))
    if t(f"{m1}_guidance_sweep"):
        b.append(tables[f"{m1}_guidance_sweep"])
    b.append(_fig(figs, "guidance_sweep", "Guidance sweep"))
    if t(f"{m1}_selected"):
        b.append(tables[f"{m1}_selected"])
    if isinstance(figs["guidance_response"], Path):
        b.append(_fig(figs, "guidance_response", "Guidance response: RMS displacement from unguided samples against the "
                      "CFG-equivalent scale (solid: the learned or configured guidance; dotted: two-pass CFG)"))
    b += [Heading("Training losses"), _fig(figs, "losses", "Training losses per row kind")]
    b += [Heading("Configuration differences"), tables["config_diff"], Heading("Run metadata"), tables["metadata"]]
    return body, b
