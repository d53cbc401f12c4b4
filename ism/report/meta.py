"""Run metadata of a sweep: code version, profile, data, extractor, reference statistics, hardware and cost."""
from __future__ import annotations

import json
import math
import statistics
from typing import Any

import pandas as pd

from ism.system import dburl
from ism.report.load import Sweep
from ism.report.tables import Table, fmt


def _uniq(values) -> str:
    vals = [str(v) for v in dict.fromkeys(v for v in values if v not in (None, "", "nan"))]
    return ", ".join(vals) if vals else "not recorded"


def _param(sw: Sweep, key: str) -> str:
    return _uniq(sw.params[m].get(key) for m in sw.trial_ids())


def _hours(s: float) -> str:
    return f"{s / 3600:.3g} h" if s >= 360 else f"{s / 60:.3g} min"


def trial_seconds(sw: Sweep, hist: pd.DataFrame) -> dict[str, float]:
    """Wall seconds of each finished trial, training and evaluation included.

    Start = timestamp of the first logged wall_time_s minus its value (the run's creation time includes queueing);
    end = the run's end time. Falls back to the training wall time when the history is missing.
    """
    out = {}
    ends = sw.trials.drop_duplicates("mlflow_id").set_index("mlflow_id")["end_time"].to_dict()
    wt = hist[hist["key"] == "wall_time_s"] if len(hist) else hist
    for mid in sw.trial_ids():
        train = sw.scalars[(sw.scalars["mlflow_id"] == mid) & (sw.scalars["key"] == "wall_time_s")]["value"]
        train_s = float(train.iloc[0]) if len(train) else math.nan
        h = wt[wt["mlflow_id"] == mid].sort_values("step") if len(wt) else wt
        if len(h) and ends.get(mid):
            start_ms = float(h.iloc[0]["timestamp"]) - 1000 * float(h.iloc[0]["value"])
            total = (float(ends[mid]) - start_ms) / 1000
            out[mid] = max(total, train_s) if math.isfinite(train_s) else total
        elif math.isfinite(train_s):
            out[mid] = train_s
    return out


def _param_counts(sw: Sweep) -> str:
    """'54,377 parameters' or, when variants differ, each count labelled: intrinsic guidance adds the w embedder."""
    df = sw.scalars[sw.scalars["key"] == "params"].drop_duplicates("mlflow_id") if len(sw.scalars) else []
    modes: dict[int, set[str]] = {}
    for _, r in (df.iterrows() if len(df) else []):
        mode = sw.params.get(r["mlflow_id"], {}).get("guidance.mode", "?")
        modes.setdefault(int(r["value"]), set()).add(mode)
    if len(modes) <= 1:
        return f"{next(iter(modes)):,} parameters" if modes else "parameters not recorded"

    def label(ms: set[str]) -> str:
        if "intrinsic" not in ms:
            return "without it (" + ", ".join(sorted(ms)) + ")"
        return "with the w embedder (intrinsic guidance)" if ms == {"intrinsic"} else "modes " + ", ".join(sorted(ms))
    return "parameters: " + "; ".join(f"{n:,} {label(ms)}" for n, ms in sorted(modes.items(), reverse=True))


def metadata_table(sw: Sweep, files: dict[str, dict[str, Any]], hist: pd.DataFrame) -> Table:
    """Key/value table of everything needed to reproduce and cost the sweep."""
    p = sw.parent
    tags, params = p["tags"], p["params"]
    ev = [r for f in files.values() for r in f.get("eval", [])]
    summ = [f.get("summary", {}) for f in files.values()]
    try:
        res = json.loads(params.get("resources", "{}"))
    except json.JSONDecodeError:
        res = {}
    secs = trial_seconds(sw, hist)
    total = sum(secs.values())
    sweep_s = (p["end_time"] - p["start_time"]) / 1000 if p.get("end_time") and p.get("start_time") else math.nan
    acc = sw.scalars[sw.scalars["key"] == "extractor_accuracy"]["value"] if len(sw.scalars) else []
    mem = sw.scalars[sw.scalars["key"] == "peak_mem_mb"].drop_duplicates("mlflow_id")["value"] if len(sw.scalars) else []
    n_trials = sw.trials["mlflow_id"].nunique()
    planned = len(sw.plan.get("trials", [])) or n_trials
    hw = _uniq(sw.trials["hardware"]) if "hardware" in sw.trials else "not recorded"
    rows = [
        ("spec / experiment", f"{sw.spec} / {sw.experiment}"),
        ("sweep", f"MLflow run {p['mlflow_id']} (sweep id {tags.get('ism.sweep_id', '?')}), status {p['status']}"),
        ("tracking URI", dburl.shown(sw.uri)),
        ("git commit", _uniq([tags.get("ism.git_commit"), *sw.trials["git_commit"]])),
        ("profile / preset", f"{tags.get('ism.profile', '?')} / {tags.get('ism.preset', params.get('preset', '?'))}"),
        ("dataset", f"{_param(sw, 'data.name')} at {_param(sw, 'data.resolution')} px, max_items {_param(sw, 'data.max_items')}"),
        ("model", f"{_param(sw, 'model.name')}, {_param_counts(sw)}"),
        ("training", f"{_param(sw, 'run.steps')} steps, batch {_param(sw, 'optim.batch_size')}, lr {_param(sw, 'optim.lr')}"),
        ("variants × seeds", f"{len(sw.variants)} variants × seeds {sw.seeds}; {sw.finished()['mlflow_id'].nunique()} of "
                             f"{planned} trials finished"),
        ("feature extractor", f"{_uniq([r.get('extractor') for r in ev] or [_param(sw, 'eval.extractor')])}; "
                              f"classifier accuracy {_uniq(fmt(a, 4) for a in acc)}"),
        ("N (samples per step count)", _uniq([r.get("n") for r in ev] or [_param(sw, "eval.num_samples")])),
        ("reference-statistics hash", _uniq(r.get("ref_hash") for r in ev)),
        ("hardware", f"device {_uniq(s.get('device') for s in summ)}; nodes {_uniq(sw.trials['node'])}; "
                     f"per trial {res or 'not recorded'}" + (f"; {hw}" if hw != "not recorded" else "")),
        ("wall time", f"sweep {_hours(sweep_s) if math.isfinite(sweep_s) else 'unfinished'}; trials "
                      f"{_hours(total)} in all, median {_hours(statistics.median(secs.values())) if secs else '–'} each"),
        ("CPU-hours / GPU-hours", f"{total * res.get('cpu', 0) / 3600:.3g} / {total * res.get('gpu', 0) / 3600:.3g} "
                                  "(trial wall time × its CPU / GPU share)"),
        ("peak memory per trial", f"max {fmt(max(mem), 4)} MB, median {fmt(statistics.median(mem), 4)} MB"
                                  if len(mem) else "not recorded"),
    ]
    rows += [("profile note", n) for n in sw.notes]
    if sw.other_sweeps:
        rows.append(("other sweeps of this spec", "; ".join(sw.other_sweeps[:5]) + (" …" if len(sw.other_sweeps) > 5 else "")))
    data = pd.DataFrame(rows, columns=["field", "value"])
    return Table("metadata", "Run metadata", ["field", "value"], [list(r) for r in rows], set(), "", data)
