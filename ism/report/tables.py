"""The report's tables, built from a loaded Sweep with pandas; each also keeps its full-precision numbers (CSV)."""
from __future__ import annotations

import json
import math
from typing import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ism.report.ci import Interval, delta_ci, log_mean_ci, mean_ci, positive, ratio_ci
from ism.report.load import Sweep, distinct, expected_seeds, label  # noqa: F401  (used here and by the other tables)

# The paper's cumulative ablation (ImageNet-256, 250K iterations, FID 1-step / 4-step), quoted from
# docs/method.md#paper-numbers: a reference column, never one of our results.
PAPER_CUMULATIVE = (("intrinsic guidance", 9.62, 3.17), ("+ interval guidance", 8.49, 2.81),
                    ("+ wavelet loss", 8.12, 2.64), ("+ sOT", 7.97, 2.23), ("+ twin EMA", 6.56, 2.16))
DIAGNOSTICS = ("effective_guidance", "spectrum_top_err", "sc_gap", "straightness", "pairing_cost")


@dataclass
class Table:
    """A rendered-as-text table: header, rows of strings, bold cells (row, col), a note, and its raw numbers."""
    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    note: str = ""
    data: pd.DataFrame | None = None


def fmt(x: float, digits: int = 4) -> str:
    """A number for a table cell: `digits` significant digits, fixed-point between 1e-3 and 1e6 ('–' if missing)."""
    if x is None or not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if -3 <= mag < 6:
        return f"{x:.{max(0, digits - 1 - mag)}f}"
    return f"{x:.{digits - 1}e}"


def log_metric(sw: Sweep, metric: str) -> bool:
    """Whether a metric gets log-scale intervals and ratios: every value of it in the sweep is > 0 (FID; KID can be < 0)."""
    df = sw.scores
    return bool(len(df)) and positive(df.loc[df["metric"] == metric, "value"])


def center_ci(values, log: bool) -> Interval:
    """The interval of a table cell: geometric mean with the back-transformed log t-interval, else the arithmetic one."""
    return log_mean_ci(list(values)) if log else mean_ci(list(values))


def compare_ci(a: Mapping[int, float], b: Mapping[int, float], log: bool) -> Interval:
    """b against a: the ratio b/a (log metrics) or the difference b − a, paired by seed when possible, else Welch."""
    if log and (a or b) and positive([*a.values(), *b.values()]):
        return ratio_ci(a, b)
    return delta_ci(a, b)


def cell(iv: Interval, expected: int) -> str:
    """'mean ± half-width' (arithmetic) or 'geometric mean [lo, hi]' (log interval), '(n=k/N)' when seeds are missing.

    A cell without an interval (a single seed) shows the bare value; the tables' notes say so.
    """
    if iv.n == 0:
        return "–"
    if iv.method == "log-t" and iv.has_ci:
        s = f"{fmt(iv.mean)} [{fmt(iv.lo, 3)}, {fmt(iv.hi, 3)}]"
    else:
        s = fmt(iv.mean) + (f" ± {fmt(iv.half, 2)}" if iv.has_ci else "")
    if iv.n < expected:
        s += f" (n={iv.n}/{expected})"
    return s


def ratio_cell(iv: Interval) -> str:
    """'×ratio [lo, hi]' of a ratio to a reference."""
    if iv.n == 0 or not math.isfinite(iv.mean):
        return "–"
    return f"×{fmt(iv.mean, 3)}" + (f" [{fmt(iv.lo, 3)}, {fmt(iv.hi, 3)}]" if iv.has_ci else " (no CI)")


def compare_cell(iv: Interval, log: bool) -> str:
    return ratio_cell(iv) if log else delta_cell(iv)


def seed_columns(vals: Mapping[int, float]) -> dict[str, float]:
    """The raw per-seed values as CSV columns seed_0, seed_1, ..."""
    return {f"seed_{k}": vals[k] for k in sorted(vals)}


def _frame(raw: list[dict]) -> pd.DataFrame:
    """Rows to a frame with the seed_* columns last, in seed order (missing seeds are empty)."""
    df = pd.DataFrame(raw)
    seeds = sorted((c for c in df.columns if str(c).startswith("seed_")), key=lambda c: int(c[5:]))
    return df[[c for c in df.columns if c not in seeds] + seeds]


def delta_cell(iv: Interval) -> str:
    """'delta [lo, hi]' of a difference."""
    if iv.n == 0 or not math.isfinite(iv.mean):
        return "–"
    sign = lambda x: ("+" if x >= 0 else "") + fmt(x, 3)  # noqa: E731
    return sign(iv.mean) + (f" [{sign(iv.lo)}, {sign(iv.hi)}]" if iv.has_ci else " (no CI)")


# ----------------------------------------------------------------------------------------------- metric × steps
def metric_table(sw: Sweep, metric: str, title: str) -> Table | None:
    """Mean and 95 % t-CI over seeds per variant × step count; best (lowest mean) per column in bold.

    A strictly positive metric (FID) shows the geometric mean and the log-scale interval, [lo, hi] (always > 0).
    """
    steps = sw.steps_of(metric)
    if not steps:
        return None
    log = log_metric(sw, metric)
    cols = ["variant", "seeds"] + [f"{s} step{'s' * (s > 1)}" for s in steps]
    rows, raw, means = [], [], {}
    for i, v in enumerate(distinct(sw)):
        exp = expected_seeds(sw, v)
        row, nmax = [label(sw, v), ""], 0
        for j, s in enumerate(steps):
            vals = sw.values(metric, s).get(v, {})
            iv = center_ci(vals.values(), log)
            nmax = max(nmax, iv.n)
            row.append(cell(iv, exp))
            means[(i, j)] = iv.mean
            arith = mean_ci(list(vals.values())).mean
            raw.append({"variant": v, "steps": s, "mean": arith,
                        "geo_mean": iv.mean if iv.method == "log-t" else math.nan, "ci_low": iv.lo, "ci_high": iv.hi,
                        "interval": iv.method if iv.n else "", "n": iv.n, "expected": exp, **seed_columns(vals)})
        row[1] = f"{nmax}/{exp}" + (" ⚠" if nmax < exp else "")
        rows.append(row)
    bold = set()
    for j in range(len(steps)):
        col = {i: m for (i, jj), m in means.items() if jj == j and math.isfinite(m)}
        if col:
            best = min(col.values())
            bold |= {(i, j + 2) for i, m in col.items() if m == best}
    how = ("Geometric mean over seeds [95 % interval]: the t-interval of log(" + metric.upper() + ") back-transformed, "
           "asymmetric and always > 0" if log else "Mean ± half-width of the 95 % t-interval over seeds")
    note = (how + " (lower is better; best per column in bold). 'seeds' = finished/planned; a cell with fewer seeds "
            "than planned shows (n=k/N); a cell without an interval has a single seed. The CSV holds the arithmetic "
            "mean, the interval and every seed's value (seed_k).")
    return Table(f"{metric}_by_steps", title, cols, rows, bold, note, _frame(raw))


def delta_table(sw: Sweep, metric: str) -> Table | None:
    """Each variant against the baseline per step count, with the interval of the comparison (paired by seed when
    possible, else Welch): the ratio variant / baseline for a strictly positive metric (FID; table '<metric>_ratio',
    intervals on log values), else the difference variant − baseline (table '<metric>_delta')."""
    steps = sw.steps_of(metric)
    if not steps or not sw.baseline:
        return None
    log = log_metric(sw, metric)
    null, key = (1.0, "ratio") if log else (0.0, "delta")
    base = {s: sw.values(metric, s).get(sw.baseline, {}) for s in steps}
    cols = [f"variant {'÷' if log else '−'} " + sw.baseline] + [f"{s} step{'s' * (s > 1)}" for s in steps] + ["interval"]
    rows, bold, raw = [], set(), []
    for v in distinct(sw):
        if v == sw.baseline:
            continue
        row, methods = [label(sw, v)], set()
        for j, s in enumerate(steps):
            iv = compare_ci(base[s], sw.values(metric, s).get(v, {}), log)
            row.append(compare_cell(iv, log))
            if iv.n:
                methods.add(f"{iv.method} (n={iv.n})" if iv.method == "paired" else iv.method)
            if iv.excludes(null):
                bold.add((len(rows), j + 1))
            raw.append({"variant": v, "baseline": sw.baseline, "steps": s, key: iv.mean, "ci_low": iv.lo,
                        "ci_high": iv.hi, "n": iv.n, "method": iv.method, "df": iv.df})
        row.append(", ".join(sorted(methods)) or "–")
        rows.append(row)
    if not rows:
        return None
    how = ("a paired t-interval over seeds when both hold the same seeds, else Welch's interval (the last column says "
           "which; 'single seed' and 'n<2' have none)")
    if log:
        note = (f"Ratio to the baseline '{sw.baseline}' (ratio of geometric means) with its 95 % interval, computed on "
                f"log({metric.upper()}): {how}. Bold: the interval excludes 1; ×0.80 = 20 % lower (better) than the "
                "baseline.")
        return Table(f"{metric}_ratio", f"{metric.upper()} ratio to the baseline", cols, rows, bold, note,
                     pd.DataFrame(raw))
    note = (f"Difference of means to the baseline '{sw.baseline}' with its 95 % interval: {how}. "
            "Bold: the interval excludes 0; negative = lower (better) than the baseline.")
    return Table(f"{metric}_delta", f"{metric.upper()} difference to the baseline", cols, rows, bold, note,
                 pd.DataFrame(raw))


def cumulative_group(sw: Sweep) -> tuple[str, list[str]] | None:
    """The spec's cumulative-order group (a group whose name mentions 'cumul'), members that ran."""
    groups = sw.plan.get("groups", {})
    for name, members in groups.items():
        if "cumul" in name.lower():
            return name, [m for m in members if m in sw.variants]
    return None


def cumulative_table(sw: Sweep, metric: str) -> Table | None:
    """The paper's cumulative order: each row adds one component; delta to the previous row with its CI."""
    grp = cumulative_group(sw)
    if grp is None or not grp[1]:
        return None
    name, members = grp
    avail = sw.steps_of(metric)
    log = log_metric(sw, metric)
    steps = [s for s in (1, 4) if s in avail] or avail[:2]
    paper = dict(zip(members[-len(PAPER_CUMULATIVE):], PAPER_CUMULATIVE)) if len(members) >= len(PAPER_CUMULATIVE) else {}
    cols = (["order", "variant"] + [f"{metric.upper()} {s}-step" for s in steps]
            + [f"{'× prev' if log else 'Δ prev'} {s}-step" for s in steps])
    if paper:
        cols += ["paper row", "paper 1-step", "paper 4-step"]
    rows, bold, raw = [], set(), []
    for i, v in enumerate(members):
        row = [str(i), label(sw, v)]
        deltas = []
        for j, s in enumerate(steps):
            vals = sw.values(metric, s).get(v, {})
            iv = center_ci(vals.values(), log)
            row.append(cell(iv, expected_seeds(sw, v)))
            d = compare_ci(sw.values(metric, s).get(members[i - 1], {}), vals, log) if i else None
            deltas.append(compare_cell(d, log) if d else "")
            if d is not None and d.excludes(1.0 if log else 0.0):
                bold.add((i, 2 + len(steps) + j))
            k = "ratio" if log else "delta"
            raw.append({"order": i, "variant": v, "steps": s, "mean": iv.mean, "ci_low": iv.lo, "ci_high": iv.hi,
                        "interval": iv.method if iv.n else "", "n": iv.n, f"{k}_prev": d.mean if d else math.nan,
                        f"{k}_low": d.lo if d else math.nan, f"{k}_high": d.hi if d else math.nan,
                        f"{k}_method": d.method if d else ""})
        row += deltas
        if paper:
            p = paper.get(v)
            row += [p[0], f"{p[1]:g}", f"{p[2]:g}"] if p else ["", "", ""]
        rows.append(row)
    prev = ("× prev = this row ÷ the row above (geometric means; interval on log values; bold when it excludes 1)"
            if log else "Δ prev = this row − the row above (bold when its interval excludes 0)")
    cells = ("; cells: geometric mean [95 % log-scale interval]" if log else "; cells: mean ± 95 % half-width")
    note = (f"Group '{name}' of the spec, in order. {prev}, with its 95 % interval{cells}. Paper columns: iSM's "
            "cumulative ablation on ImageNet-256 (250K iterations), for direction only — a different dataset and "
            "scale." if paper else f"Group '{name}' of the spec, in order. {prev}, with its 95 % interval{cells}.")
    return Table("cumulative", "Cumulative ablation (the paper's order)", cols, rows, bold, note, pd.DataFrame(raw))


def group_tables(sw: Sweep, metric: str) -> list[Table]:
    """Every other group of the spec (e.g. leave-one-out): each member against the group's first member."""
    out = []
    avail = sw.steps_of(metric)
    log = log_metric(sw, metric)
    steps = [s for s in (1, 4, 128) if s in avail] or avail[:1] + avail[-1:]
    for name, members in sw.plan.get("groups", {}).items():
        members = [m for m in members if m in sw.variants]
        if "cumul" in name.lower() or len(members) < 2 or not steps:
            continue
        ref = members[0]
        cols = [f"variant {'÷' if log else '−'} {ref}"] + [f"{'×' if log else 'Δ'} {s}-step" for s in steps] + ["interval"]
        rows, bold, raw = [], set(), []
        for v in members[1:]:
            row, methods = [label(sw, v)], set()
            for j, s in enumerate(steps):
                d = compare_ci(sw.values(metric, s).get(ref, {}), sw.values(metric, s).get(v, {}), log)
                row.append(compare_cell(d, log))
                if d.n:
                    methods.add(f"{d.method} (n={d.n})" if d.method == "paired" else d.method)
                if d.excludes(1.0 if log else 0.0):
                    bold.add((len(rows), j + 1))
                raw.append({"group": name, "reference": ref, "variant": v, "steps": s, "ratio" if log else "delta": d.mean,
                            "ci_low": d.lo, "ci_high": d.hi, "n": d.n, "method": d.method})
            rows.append(row + [", ".join(sorted(methods)) or "–"])
        out.append(Table(f"group_{name}", f"Group '{name}': {metric.upper()} against {ref}", cols, rows, bold,
                         (f"× = variant ÷ {ref} (geometric means) with its 95 % interval on log values (paired by "
                          "seed when possible, else Welch); bold when it excludes 1." if log else
                          f"Δ = variant − {ref} with its 95 % interval (paired by seed when possible, else Welch); "
                          "bold when it excludes 0."), pd.DataFrame(raw)))
    return out


# ----------------------------------------------------------------------------------------------- config, diagnostics
def _fmt_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)


def config_diff_table(sw: Sweep) -> Table:
    """Keys that differ from the base, per variant (from plan.json; else the params against the baseline's)."""
    rows, raw = [], []
    by_variant: dict[str, dict] = {}
    for t in sw.plan.get("trials", []):
        for v in t["variants"]:
            by_variant.setdefault(v, {k: tuple(x) for k, x in t.get("diff", {}).items() if k != "run.seed"})
    if not by_variant:
        base_id = sw.representative(sw.baseline)
        base = sw.params.get(base_id, {}) if base_id else {}
        for v in sw.variants:
            mid = sw.representative(v)
            p = sw.params.get(mid, {}) if mid else {}
            by_variant[v] = {k: (base.get(k), p.get(k)) for k in sorted(set(base) | set(p))
                             if k != "run.seed" and base.get(k) != p.get(k)}
    reasons = sw.plan.get("reasons", {})
    for v in sw.variants:
        d = by_variant.get(v, {})
        if not d:
            rows.append([v, "(the base)", "", "", reasons.get(v, "")])
        for i, (k, (a, b)) in enumerate(sorted(d.items())):
            rows.append([v if i == 0 else "", k, _fmt_value(a), _fmt_value(b), reasons.get(v, "") if i == 0 else ""])
            raw.append({"variant": v, "key": k, "base": _fmt_value(a), "value": _fmt_value(b)})
    return Table("config_diff", "Configuration differences from the base", ["variant", "key", "base", "variant value",
                 "reason"], rows, set(), "Only keys whose resolved value differs from the base config (seed excluded).",
                 pd.DataFrame(raw, columns=["variant", "key", "base", "value"]))


def diagnostics_table(sw: Sweep) -> Table | None:
    """The five problems' diagnostics per variant (mean ± CI over seeds) at the step counts they were measured."""
    colspec = []
    for m in DIAGNOSTICS:
        st = sw.steps_of(m)
        if st:
            colspec += [(m, s) for s in sorted({st[0], st[-1]})]
        elif sw.values(m):
            colspec.append((m, None))
    if not colspec:
        return None
    cols = ["variant"] + [f"{m} @{s}" if s else m for m, s in colspec]
    rows, raw = [], []
    for v in distinct(sw):
        row = [label(sw, v)]
        for m, s in colspec:
            vals = sw.values(m, s).get(v, {})
            iv = mean_ci(list(vals.values()))
            row.append(cell(iv, expected_seeds(sw, v)))
            raw.append({"variant": v, "metric": m, "steps": s, "mean": iv.mean, "ci_low": iv.lo, "ci_high": iv.hi,
                        "n": iv.n, **seed_columns(vals)})
        rows.append(row)
    note = ("Mean ± half-width of the 95 % t-interval over seeds (a bare value: a single seed; (n=k/N): seeds missing). "
            "effective_guidance: the CFG scale whose 128-step CFG samples give the same guidance statistic as the "
            "samples at that step count (the guidance ruler; see the compounding table), in CFG-equivalent units for every mode (1 + w for intrinsic guidance, whose target is (1+w) v_c − w v_u; the "
            "CFG scale itself for cfg_finest / cfg_every_level); spectrum_top_err: "
            "log-spectral error in the top frequency bands vs held-out data; sc_gap: few-step vs many-step sample "
            "distance (same noise); straightness: path length / chord of the many-step trajectory (1 = straight); "
            "pairing_cost: ||x0 − x1||².")
    return Table("diagnostics", "Diagnostics of the five problems", cols, rows, set(), note, _frame(raw))


def sweep_table(sw: Sweep, metric: str) -> Table | None:
    """The guidance sweep: metric per (variant, w) at each sweep step count, mean ± CI over seeds."""
    df = sw.scores[(sw.scores["metric"] == metric) & sw.scores["sweep"]] if len(sw.scores) else sw.scores
    if not len(df):
        return None
    steps = sorted(int(s) for s in df["steps"].unique())
    log = positive(df["value"])
    cols = ["variant", "w"] + [f"{s} step{'s' * (s > 1)}" for s in steps]
    rows, raw, bold = [], [], set()
    for v in [x for x in sw.variants if x in set(df["variant"])]:
        ws = sorted(df[df["variant"] == v]["guidance"].unique())
        best = {}
        for w in ws:
            row = [label(sw, v), f"{w:g}"]
            for j, s in enumerate(steps):
                vals = sw.values(metric, s, w, sweep=True).get(v, {})
                iv = center_ci(vals.values(), log)
                row.append(cell(iv, expected_seeds(sw, v)))
                raw.append({"variant": v, "w": w, "steps": s, "mean": iv.mean, "ci_low": iv.lo, "ci_high": iv.hi,
                            "interval": iv.method if iv.n else "", "n": iv.n, **seed_columns(vals)})
                if math.isfinite(iv.mean) and (j not in best or iv.mean < best[j][0]):
                    best[j] = (iv.mean, len(rows))
            rows.append(row)
        bold |= {(r, j + 2) for j, (_, r) in best.items()}
    return Table(f"{metric}_guidance_sweep", f"Guidance sweep ({metric.upper()})", cols, rows, bold,
                 "One model sampled at several guidance values (w for intrinsic guidance, the CFG scale for the cfg "
                 "modes); bold = best w per variant and step count. "
                 + ("Geometric mean [95 % interval on log values]." if log else "Mean ± 95 % half-width."),
                 _frame(raw))


def missing_table(sw: Sweep) -> Table | None:
    """Missing, failed or unfinished trials with their reasons (never silently dropped)."""
    if sw.missing.empty:
        return None
    rows, grouped = [], {}
    for r in sw.missing.itertuples():
        if r.status == "NOT RUN":  # left out on purpose by the adaptive seeds: one row per config, its seeds listed
            grouped.setdefault((r.variants, r.reason), []).append(int(r.seed))
        else:
            rows.append([r.variants, str(r.seed), r.run_id, r.status, r.reason])
    rows += [[v, ", ".join(map(str, sorted(seeds))), "", "NOT RUN", reason] for (v, reason), seeds in grouped.items()]
    return Table("missing", "Missing and failed trials", ["variant(s)", "seed", "run id", "status", "reason"], rows,
                 set(), "These trials contribute no numbers to the tables above. NOT RUN: left out by the adaptive "
                 "seeds (decided, or the budget), one row per config.", sw.missing.copy())
