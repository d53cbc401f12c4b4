"""MLflow -> pandas: one sweep (parent run + trial runs) as tidy frames; every number the report shows comes from here.

Layout read (docs/architecture.md, "MLflow layout"): experiment `ism/<spec>`, a parent run tagged ism.kind=sweep
with plan.json / notes.txt / spec.yaml artifacts, a child run per trial tagged ism.variant(s) / ism.seed /
ism.run_id, metrics `<metric>_steps_N` (and `_w_W` for the guidance sweep), training losses over steps.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ism.system import dburl
from ism.ablation.adaptive import baseline_of
from ism.conf import metric_keys
from ism import tracking
from ism.conf.config import ConfigError

LOSS_KEYS = ("loss", "loss_fm", "loss_sc", "loss_guid")
PRIMARY = (("fid", "kid"), ("energy_distance", "sliced_wasserstein"))  # images, then 2-D points


@dataclass
class Sweep:
    """One sweep as pandas frames plus the parent run's plan."""
    uri: str
    spec: str
    experiment: str
    parent: dict[str, Any]
    plan: dict[str, Any]
    notes: list[str]
    spec_text: str
    trials: pd.DataFrame      # one row per (trial run, variant name it stands for)
    scores: pd.DataFrame      # variant, seed, mlflow_id, metric, steps, guidance, sweep, value (finished trials)
    scalars: pd.DataFrame     # variant, seed, mlflow_id, key, value: every other latest metric of finished trials
    params: dict[str, dict[str, str]]
    variants: list[str]
    seeds: list[int]
    baseline: str
    missing: pd.DataFrame     # variant(s), seed, run_id, status, reason
    other_sweeps: list[str] = field(default_factory=list)
    _index: dict | None = field(default=None, repr=False)

    @property
    def primary(self) -> tuple[str, str]:
        """The two headline metrics: (fid, kid) for images, (energy distance, sliced W) for 2-D points."""
        have = set(self.scores["metric"]) if len(self.scores) else set()
        return next((p for p in PRIMARY if p[0] in have), PRIMARY[0])

    def values(self, metric: str, steps: int | None = None, guidance: float | None = None,
               sweep: bool = False) -> dict[str, dict[int, float]]:
        """{variant: {seed: value}} of one metric at one step count (and guidance value for sweep rows)."""
        if self._index is None:  # the report asks hundreds of times: group the long frame once
            self._index = {}
            for r in self.scores.itertuples():
                g = None if math.isnan(r.guidance) else round(float(r.guidance), 9)
                for key in ((r.metric, int(r.steps), g if r.sweep else None, bool(r.sweep)),
                            (r.metric, None, None, bool(r.sweep))):
                    if key[1] is None and r.sweep:
                        continue
                    self._index.setdefault(key, {}).setdefault(r.variant, {})[int(r.seed)] = float(r.value)
        key = (metric, None if steps is None else int(steps), None if guidance is None else round(float(guidance), 9), sweep)
        out = self._index.get(key, {})
        if not out and steps is None and len(self.scalars):  # metrics logged without a step count
            s = self.scalars[self.scalars["key"] == metric]
            for r in s.itertuples():
                out.setdefault(r.variant, {})[int(r.seed)] = float(r.value)
        return {v: dict(x) for v, x in out.items()}

    def steps_of(self, metric: str, sweep: bool = False) -> list[int]:
        """Step counts at which a metric was measured."""
        if not len(self.scores):
            return []
        df = self.scores[(self.scores["metric"] == metric) & (self.scores["sweep"] == sweep)]
        return sorted(int(s) for s in df["steps"].unique())

    def scalar(self, key: str) -> dict[str, dict[int, float]]:
        """{variant: {seed: value}} of a metric without a step count (wall_time_s, peak_mem_mb, ...)."""
        out: dict[str, dict[int, float]] = {}
        if len(self.scalars):
            for r in self.scalars[self.scalars["key"] == key].itertuples():
                out.setdefault(r.variant, {})[int(r.seed)] = float(r.value)
        return out

    def finished(self) -> pd.DataFrame:
        """Trial rows that finished (one per variant name)."""
        return self.trials[self.trials["status"] == "FINISHED"]

    def trial_ids(self) -> list[str]:
        """MLflow ids of finished trial runs (each once, even when it stands for several variants)."""
        return list(dict.fromkeys(self.finished()["mlflow_id"]))

    def representative(self, variant: str) -> str | None:
        """MLflow id of the finished trial of a variant with the lowest seed (sample grids, histories)."""
        f = self.finished()
        f = f[f["variant"] == variant].sort_values("seed")
        return None if f.empty else str(f.iloc[0]["mlflow_id"])

    def components(self, variant: str) -> frozenset[str]:
        """The iSM components a variant switches on (trial tags ism.component.<name>=on, or ism.components)."""
        t = self.trials[self.trials["variant"] == variant]
        return frozenset() if t.empty else t.iloc[0]["components"]


def spec_name(target: str) -> str:
    """The spec name of `ism report TARGET`: a spec file's name, an experiment name, or a bare spec name."""
    p = Path(target)
    if p.suffix in (".yaml", ".yml"):
        if p.is_file():
            from ism.ablation.plan import load_spec  # a spec may set its own name
            return load_spec(p).name
        return p.stem
    return target[len("ism/"):] if target.startswith("ism/") else target


def _components(tags: dict[str, str]) -> frozenset[str]:
    on = {k[len("ism.component."):] for k, v in tags.items() if k.startswith("ism.component.") and v == "on"}
    if not on and tags.get("ism.components", "none") != "none":
        on = {c for c in tags["ism.components"].split(",") if c}
    return frozenset(on)


def _reason(status: str, tags: dict[str, str]) -> str:
    """Why a trial has no result, from the tags the sweep left on it."""
    err = tags.get("ism.error") or tags.get("ism.last_error")
    if status == "FAILED":
        return err or "failed (no reason recorded)"
    if status == "KILLED":
        return err or "killed before it finished"
    return f"unfinished (status {status}); rerun the sweep to resume it"


def _read_artifact_text(run_id: str, name: str, uri: str, tmp: Path) -> str | None:
    p = tracking.download(run_id, name, tmp, uri)
    return p.read_text() if p and p.is_file() else None


def ablate_hint(spec: str, uri: str, profile: str | None, spec_path: str | None = None) -> str:
    """The `ism ablate` command that makes the sweep a report asked for: the same spec path, profile and store."""
    import shlex
    parts = ["ism", "ablate", spec_path or f"ablations/{spec}.yaml"] + (["--profile", profile] if profile else [])
    if uri != tracking.tracking_uri(None):
        parts += ["--tracking-uri", dburl.masked(uri) if "@" in uri else uri]
    return " ".join(map(shlex.quote, parts))


def pick_sweep(spec: str, uri: str, profile: str | None = None, sweep: str | None = None,
               spec_path: str | None = None):
    """The parent run to report on: the given one (MLflow run id or ism.sweep_id), else the newest of the profile."""
    runs = tracking.find_sweeps(spec, profile, uri)
    if not runs:
        where = f" with profile {profile}" if profile else ""
        raise ConfigError(f"no sweep of '{spec}'{where} in the MLflow store {dburl.masked(uri)} (experiment ism/{spec}); run "
                          f"`{ablate_hint(spec, uri, profile, spec_path)}` first, or pass --tracking-uri")
    if sweep:
        chosen = [r for r in runs if sweep in (r.info.run_id, r.data.tags.get("ism.sweep_id"))]
        if not chosen:
            raise ConfigError(f"--sweep {sweep}: not a sweep of '{spec}'; known: "
                              + ", ".join(f"{r.info.run_id} ({r.data.tags.get('ism.profile')})" for r in runs))
        return chosen[0], runs
    return runs[0], runs


# Over 60 lines on purpose: the read order of one sweep (store check, parent, children, metrics, plan artifact); each step
# needs the previous one's result.
def load_sweep(target: str, uri: str | None = None, profile: str | None = None, sweep: str | None = None,
               workdir: Path | None = None) -> Sweep:
    """Read one sweep from MLflow into a Sweep (runs, metrics, plan); artifacts go to workdir."""
    import tempfile
    uri = tracking.tracking_uri(uri)
    spec = spec_name(target)
    spec_path = target if Path(target).suffix in (".yaml", ".yml") else None
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError(f"no MLflow store at {uri[len('sqlite:///'):]}; run `{ablate_hint(spec, uri, profile, spec_path)}`"
                          " first, or pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the store the sweep used")
    parent_run, all_runs = pick_sweep(spec, uri, profile, sweep, spec_path)
    parent = tracking.run_summary(parent_run)
    tmp = Path(workdir or tempfile.mkdtemp(prefix="ism-report-")) / "parent"
    plan_text = _read_artifact_text(parent["mlflow_id"], "plan.json", uri, tmp)
    plan = json.loads(plan_text) if plan_text else {}
    notes_text = _read_artifact_text(parent["mlflow_id"], "notes.txt", uri, tmp) or ""
    spec_text = _read_artifact_text(parent["mlflow_id"], "spec.yaml", uri, tmp) or ""
    others = [f"{r.info.run_id} (profile {r.data.tags.get('ism.profile')}, sweep {r.data.tags.get('ism.sweep_id')})"
              for r in all_runs if r.info.run_id != parent["mlflow_id"]]

    trial_rows, score_rows, scalar_rows, params = [], [], [], {}
    for run in tracking.child_runs(parent["mlflow_id"], uri):
        r = tracking.run_summary(run)
        tags = r["tags"]
        names = [v for v in (tags.get("ism.variants") or tags.get("ism.variant", "?")).split(",") if v]
        seed = int(tags.get("ism.seed", r["params"].get("run.seed", -1)))
        params[r["mlflow_id"]] = r["params"]
        comps = _components(tags)
        for v in names:
            trial_rows.append({"mlflow_id": r["mlflow_id"], "run_id": tags.get("ism.run_id", ""), "variant": v,
                               "variants": ",".join(names), "seed": seed, "status": r["status"],
                               "reason": "" if r["status"] == "FINISHED" else _reason(r["status"], tags),
                               "components": comps, "start_time": r["start_time"], "end_time": r["end_time"],
                               "git_commit": tags.get("ism.git_commit", ""), "node": tags.get("ism.node_ip", ""),
                               "hardware": tags.get("ism.hardware", "")})
        if r["status"] != "FINISHED":
            continue
        for key, val in r["metrics"].items():
            if val is None or not math.isfinite(val):
                continue
            m = metric_keys.parse(key)
            for v in names:
                if m:
                    score_rows.append({"variant": v, "seed": seed, "mlflow_id": r["mlflow_id"], "metric": m.metric,
                                       "steps": m.steps, "guidance": m.w if m.w is not None else math.nan,
                                       "sweep": m.w is not None, "value": float(val)})
                else:
                    scalar_rows.append({"variant": v, "seed": seed, "mlflow_id": r["mlflow_id"], "key": key,
                                        "value": float(val)})
    trials = pd.DataFrame(trial_rows, columns=["mlflow_id", "run_id", "variant", "variants", "seed", "status", "reason",
                                               "components", "start_time", "end_time", "git_commit", "node", "hardware"])
    scores = pd.DataFrame(score_rows, columns=["variant", "seed", "mlflow_id", "metric", "steps", "guidance", "sweep", "value"])
    scalars = pd.DataFrame(scalar_rows, columns=["variant", "seed", "mlflow_id", "key", "value"])

    variants = list(plan.get("variants") or dict.fromkeys(trials.sort_values("start_time")["variant"]))
    variants += [v for v in dict.fromkeys(trials["variant"]) if v not in variants]
    seeds = sorted(int(s) for s in (plan.get("seeds") or trials["seed"].unique()))
    missing = _missing(plan, trials, scores)
    sw = Sweep(uri=uri, spec=spec, experiment=tracking.experiment_name(parent["experiment_id"], uri), parent=parent,
               plan=plan, notes=[ln for ln in notes_text.splitlines() if ln.strip()], spec_text=spec_text,
               trials=trials, scores=scores, scalars=scalars, params=params, variants=variants, seeds=seeds,
               baseline="", missing=missing, other_sweeps=others)
    sw.baseline = baseline(sw)
    return sw


def _missing(plan: dict, trials: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Planned trials without a finished result, each with its reason; finished trials lacking eval metrics too."""
    rows = []
    seen = set(trials["run_id"])
    not_run = (plan.get("adaptive") or {}).get("not_run") or {}  # adaptive seeds: left out on purpose, with the reason
    for t in plan.get("trials", []):
        if t["run_id"] not in seen:
            rows.append({"variants": ",".join(t["variants"]), "seed": t["seed"], "run_id": t["run_id"],
                         "status": "NOT RUN" if t["run_id"] in not_run else "MISSING",
                         "reason": not_run.get(t["run_id"]) or "planned but no MLflow run exists under this sweep (not started)"})
    per_run = trials.drop_duplicates("mlflow_id")
    scored = set(scores["mlflow_id"]) if len(scores) else set()
    for r in per_run.itertuples():
        if r.status != "FINISHED":
            rows.append({"variants": r.variants, "seed": r.seed, "run_id": r.run_id, "status": r.status, "reason": r.reason})
        elif r.mlflow_id not in scored:
            rows.append({"variants": r.variants, "seed": r.seed, "run_id": r.run_id, "status": "FINISHED",
                         "reason": "finished without evaluation metrics (eval disabled or not logged)"})
    return pd.DataFrame(rows, columns=["variants", "seed", "run_id", "status", "reason"])


def baseline(sw: Sweep) -> str:
    """The variant every delta is taken against: the spec's base (empty config diff), else a variant named sm/baseline
    (the rule the adaptive seeds use too)."""
    return baseline_of(sw.variants, ((t["variants"], t.get("diff", {})) for t in sw.plan.get("trials", [])))


def histories(sw: Sweep, keys: tuple[str, ...] = LOSS_KEYS + ("wall_time_s",)) -> pd.DataFrame:
    """Metric histories over train steps of every finished trial: variant, seed, key, step, value, timestamp."""
    rows = []
    for mid in sw.trial_ids():
        t = sw.trials[sw.trials["mlflow_id"] == mid]
        for key in keys:
            for step, val, ts in tracking.metric_history(mid, key, sw.uri):
                for v in t["variant"]:
                    rows.append({"variant": v, "seed": int(t.iloc[0]["seed"]), "mlflow_id": mid, "key": key,
                                 "step": step, "value": val, "timestamp": ts})
    return pd.DataFrame(rows, columns=["variant", "seed", "mlflow_id", "key", "step", "value", "timestamp"])


def trial_files(sw: Sweep, workdir: Path) -> dict[str, dict[str, Any]]:
    """Per finished trial: its eval table (eval/eval.json) and summary.json, downloaded from its artifacts."""
    out = {}
    for mid in sw.trial_ids():
        d = workdir / "trials" / mid
        ev = tracking.download(mid, "eval/eval.json", d, sw.uri)
        sm = tracking.download(mid, "summary.json", d, sw.uri)
        out[mid] = {"eval": json.loads(ev.read_text()) if ev and ev.is_file() else [],
                    "summary": json.loads(sm.read_text()) if sm and sm.is_file() else {}}
    return out


GRID = re.compile(r"grid_steps_(\d+)_train_(\d+)\.png$")


def sample_grids(sw: Sweep, workdir: Path, steps: tuple[int, ...] = (1, 4, 128)) -> dict[str, dict[int, Path]]:
    """{variant: {steps: PNG}}: the newest sample grid of each variant's lowest-seed trial (same eval noise for all)."""
    out: dict[str, dict[int, Path]] = {}
    for v in sw.variants:
        mid = sw.representative(v)
        if mid is None:
            continue
        newest: dict[int, tuple[int, str]] = {}
        for path in tracking.list_artifacts(mid, "samples", sw.uri):
            m = GRID.search(path)
            if m and int(m.group(1)) in steps:
                s, tr = int(m.group(1)), int(m.group(2))
                if s not in newest or tr > newest[s][0]:
                    newest[s] = (tr, path)
        for s, (_, path) in sorted(newest.items()):
            p = tracking.download(mid, path, workdir / "grids" / mid, sw.uri)
            if p is not None:
                out.setdefault(v, {})[s] = p
    return out


# ----------------------------------------------------------------------------------------------- variants
def expected_seeds(sw: Sweep, variant: str) -> int:
    """Seeds planned for a variant: under adaptive seeds the seeds its last round asked for, else the plan's seed list,
    else the seeds seen."""
    rounds = (sw.plan.get("adaptive") or {}).get("rounds") or []
    if rounds and variant in rounds[-1].get("seeds", {}):
        return int(rounds[-1]["seeds"][variant])
    return len(sw.seeds) or max(1, len(sw.trials[sw.trials["variant"] == variant]))


def distinct(sw: Sweep) -> list[str]:
    """The variants, one per trial: of names that share a trial (identical configs) only the first, which label()
    names with its aliases, so the tables and bars show each result once."""
    seen: set[str] = set()
    out = []
    for v in sw.variants:
        t = sw.trials[sw.trials["variant"] == v]
        group = frozenset(t.iloc[0]["variants"].split(",")) if not t.empty else frozenset([v])
        if group & seen and v != sw.baseline:
            continue
        seen |= group
        out.append(v)
    return out


def aliases(sw: Sweep, v: str) -> list[str]:
    """The other names of a variant's trial (variants with identical configs share one)."""
    t = sw.trials[sw.trials["variant"] == v]
    return [x for x in (t.iloc[0]["variants"].split(",") if not t.empty else [v]) if x != v]


def label(sw: Sweep, v: str) -> str:
    """A variant's row label; variants sharing one trial (identical configs) are named together."""
    same = aliases(sw, v)
    return v + (" (= " + ", ".join(same) + ")" if same else "") + (" [baseline]" if v == sw.baseline else "")
