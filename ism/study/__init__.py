"""`ism study`: Optuna studies over config keys, run as Ray Tune trials (OptunaSearch) and tracked in MLflow.

A study spec (studies/*.yaml) names a base (a preset or an ablation variant, plus overrides), a search space over
config keys, an objective over evaluation metrics, a direction, a trial budget, parallelism, a seeded sampler and a
pruner. Every key and bound is checked against ism.config before Ray starts.

The Optuna storage is the source of truth, not Ray's experiment state (Tuner.restore has been known to drop a
searcher's state, and a killed driver leaves no usable Ray checkpoint): each run of `ism study` opens the study,
puts trials left RUNNING by an interrupted driver back to WAITING (Optuna's ask() hands them out again with the same
number and parameters, so their run dir resumes from its checkpoint), and asks Ray for exactly the trials still
missing. Pruning uses Optuna's own pruners on the intermediate values stored in the study, so decisions survive a
restart; a Tune scheduler only carries them out. The study DB holds nothing but Optuna's own tables
(optuna-dashboard reads it); ism's bookkeeping lives in trial user attributes.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import socket
import sys
import time
import typing
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Mapping

import optuna
import yaml
from optuna.trial import TrialState

from ism import ablate
from ism.config import (NON_IDENTITY_KEYS, Config, ConfigError, _suggest, deep_merge, diff, dump_yaml, flatten,
                        from_dict, identity_dict, preset_delta, run_id, to_dict, unflatten)

SPEC_KEYS = ("name", "description", "base", "space", "objective", "n_trials", "parallelism", "sampler", "pruner",
             "resources", "max_failures", "seed", "enqueue", "profiles")
BASE_KEYS = ("preset", "ablation", "variant", "overrides")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
PARAM_TYPES = ("float", "log-float", "int", "log-int", "categorical")
PROFILE_KEYS = ("n_trials", "parallelism", "overrides", "space", "pruner", "sampler", "resources", "note")
METRICS = {"points": ("energy_distance", "sliced_wasserstein"), "image": ("fid", "kid", "spectrum_top_err"),
           "latent": ("fid", "kid")}
METRIC = "objective"                 # the value trials report to Tune and log to MLflow
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
CORNER_LIMIT = 64                    # check every corner of the space when there are at most this many


# ----------------------------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class Param:
    """One searched config key."""
    key: str
    kind: str                        # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log,
                                                        step=int(self.step or 1))
        return optuna.distributions.CategoricalDistribution([_encode(c) for c in self.choices])

    def decode(self, v: Any) -> Any:
        """Optuna value -> config value (list choices travel as JSON strings: Optuna categoricals are scalars)."""
        return json.loads(v) if self.kind == "categorical" and isinstance(v, str) and v[:1] == "[" else v

    def extremes(self) -> list:
        return [self.low, self.high] if self.kind != "categorical" else list(self.choices)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"categorical {list(self.choices)}"
        return f"{'log-' if self.log else ''}{self.kind} [{self.low:g}, {self.high:g}]" + (f" step {self.step:g}" if self.step else "")


def _encode(c: Any) -> Any:
    return json.dumps(list(c)) if isinstance(c, (list, tuple)) else c


@dataclass(frozen=True)
class Objective:
    """A metric, or a weighted sum of one metric over sampling step counts."""
    terms: Mapping[str, float]       # MLflow/eval metric key -> weight
    metric: str
    steps: tuple[int, ...]
    direction: str                   # minimize | maximize

    def value(self, metrics: Mapping[str, float]) -> float:
        missing = [k for k in self.terms if k not in metrics]
        if missing:
            raise ConfigError(f"objective: the evaluation produced no {', '.join(missing)} (got {', '.join(sorted(metrics))})")
        return float(sum(w * float(metrics[k]) for k, w in self.terms.items()))

    def describe(self) -> str:
        body = " + ".join(f"{w:g}*{k}" for k, w in self.terms.items())
        return f"{self.direction} {body}"


@dataclass(frozen=True)
class StudySpec:
    name: str
    path: str
    description: str
    preset: str | None
    ablation: str | None
    variant: str | None
    overrides: Mapping[str, Any]
    space: tuple[Param, ...]
    objective_raw: Mapping[str, Any]
    n_trials: int
    parallelism: int
    sampler: Mapping[str, Any]
    pruner: Mapping[str, Any]
    resources: Mapping[str, float]
    max_failures: int
    seed: int
    enqueue: tuple[Mapping[str, Any], ...]
    profiles: Mapping[str, Mapping[str, Any]]
    text: str


def _posint(where: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}: expected an integer >= {lo}, got {v!r}")
    return v


def _num(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}: expected a finite number, got {v!r}")
    return v


def _config_hint(key: str):
    """The type hint of a dotted config key, or a ConfigError naming the allowed keys."""
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]
    sec, _, name = key.partition(".")
    if sec not in sections or not name:
        raise ConfigError(f"space: unknown config key '{key}'; keys are section.name with sections "
                          f"{', '.join(sections)}." + _suggest(sec, sections))
    fields = {f.name: f for f in dataclasses.fields(sections[sec])}
    if name not in fields:
        raise ConfigError(f"space: unknown config key '{key}'; allowed in '{sec}': {', '.join(fields)}." + _suggest(name, fields))
    return typing.get_type_hints(sections[sec])[name]


def parse_param(key: str, raw: Any) -> Param:
    """Shape-check one search-space entry (bounds are checked against the config in plan())."""
    where = f"space.{key}"
    hint = _config_hint(key)
    if key in NON_IDENTITY_KEYS:
        raise ConfigError(f"{where}: {key} does not change what a run computes; search a key that does")
    raw = ablate._mapping(where, raw)
    ablate._check_keys(where, raw, PARAM_KEYS)
    kind = raw.get("type", "categorical" if "choices" in raw else None)
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}.type: {kind!r} is not allowed; choose one of {', '.join(PARAM_TYPES)}."
                          + _suggest(str(kind), PARAM_TYPES))
    log = bool(raw.get("log", False)) or kind.startswith("log-")
    kind = kind.removeprefix("log-")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        enc = [_encode(c) for c in choices]
        if len(set(map(json.dumps, enc))) != len(enc):
            raise ConfigError(f"{where}.choices: repeated values in {choices!r}")
        return Param(key, "categorical", choices=tuple(tuple(c) if isinstance(c, list) else c for c in choices))
    if typing.get_origin(hint) is tuple or hint not in (int, float):
        raise ConfigError(f"{where}: {key} holds {getattr(hint, '__name__', hint)} values; search it with type: categorical")
    if kind == "float" and hint is int:
        raise ConfigError(f"{where}: {key} is an integer key; use type: int")
    for b in ("low", "high"):
        if b not in raw:
            raise ConfigError(f"{where}: '{b}' is required for type {kind}")
    low, high = _num(f"{where}.low", raw["low"]), _num(f"{where}.high", raw["high"])
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: type int needs integer bounds, got [{low}, {high}]")
    if not low < high:
        raise ConfigError(f"{where}: empty range [{low}, {high}]; low must be below high "
                          "(fix a single value in base.overrides instead)")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range must stay above 0, got [{low}, {high}]; use type: {kind} "
                          "for a linear range or raise low")
    step = raw.get("step")
    if step is not None:
        step = _num(f"{where}.step", step)
        if step <= 0 or step > high - low or log:
            raise ConfigError(f"{where}.step: {step!r} must be > 0 and <= high - low, and not combined with log")
    return Param(key, kind, float(low) if kind == "float" else int(low), float(high) if kind == "float" else int(high),
                 log, step)


def load_spec(path: str | Path) -> StudySpec:
    """Parse and shape-check a study spec file (configs are resolved and validated by plan())."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"study spec not found: {p}")
    text = p.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{p}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    ablate._check_keys(str(p), raw, SPEC_KEYS)
    base = ablate._mapping(f"{p}: base", raw.get("base"))
    ablate._check_keys(f"{p}: base", base, BASE_KEYS)
    if base.get("preset") is not None:
        preset_delta(base["preset"])
    if bool(base.get("ablation")) != bool(base.get("variant")):
        raise ConfigError(f"{p}: base: 'ablation' (a spec path) and 'variant' (one of its variants) go together")
    if base.get("ablation") and base.get("preset"):
        raise ConfigError(f"{p}: base: give either 'preset' or 'ablation' + 'variant' (the ablation spec names its preset)")
    space_raw = ablate._mapping(f"{p}: space", raw.get("space"))
    if not space_raw:
        raise ConfigError(f"{p}: space: at least one searched key is required (e.g. optim.lr: {{type: log-float, low: 1e-4, high: 1e-2}})")
    try:
        space = tuple(parse_param(str(k), v) for k, v in flatten_space(space_raw).items())
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    profiles = ablate._mapping(f"{p}: profiles", raw.get("profiles"))
    for name, adj in profiles.items():
        if name not in ablate.PROFILES:
            raise ConfigError(f"{p}: profiles: unknown profile '{name}'; choose one of {', '.join(ablate.PROFILES)}."
                              + _suggest(str(name), ablate.PROFILES))
        ablate._check_keys(f"{p}: profiles.{name}", ablate._mapping(f"{p}: profiles.{name}", adj), PROFILE_KEYS)
    enqueue = raw.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(e, Mapping) for e in enqueue):
        raise ConfigError(f"{p}: enqueue: expected a list of {{key: value}} mappings (trials to run first)")
    return StudySpec(
        name=str(raw.get("name") or p.stem), path=str(p), description=str(raw.get("description", "")).strip(),
        preset=base.get("preset"), ablation=base.get("ablation"), variant=base.get("variant"),
        overrides=ablate._overrides(f"{p}: base.overrides", base.get("overrides")), space=space,
        objective_raw=ablate._mapping(f"{p}: objective", raw.get("objective")),
        n_trials=_posint(f"{p}: n_trials", raw.get("n_trials", 20)),
        parallelism=_posint(f"{p}: parallelism", raw.get("parallelism", 1)),
        sampler=ablate._mapping(f"{p}: sampler", raw.get("sampler")), pruner=ablate._mapping(f"{p}: pruner", raw.get("pruner")),
        resources=ablate._resources(f"{p}: resources", raw.get("resources")),
        max_failures=_posint(f"{p}: max_failures", raw.get("max_failures", 1), 0), seed=_posint(f"{p}: seed", raw.get("seed", 0), 0),
        enqueue=tuple(dict(e) for e in enqueue), profiles=profiles, text=text)


def flatten_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """Space entries as dotted keys: {'optim': {'lr': {...}}} and {'optim.lr': {...}} both work."""
    out = {}
    for k, v in space.items():
        if isinstance(v, Mapping) and not (set(v) & set(PARAM_KEYS)):
            out.update({f"{k}.{kk}": vv for kk, vv in flatten_space(v).items()})
        else:
            out[str(k)] = v
    return out


def parse_objective(raw: Mapping[str, Any], cfg: Config, where: str) -> Objective:
    """Check the objective against what the evaluator of this config produces."""
    ablate._check_keys(f"{where}: objective", raw, ("metric", "steps", "direction"))
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{where}: objective.metric: required, e.g. fid (with steps) or fid_steps_1")
    kind = "points" if cfg.data.name == "toy2d" else "latent" if cfg.data.name == "latents" else "image"
    m = re.fullmatch(r"(.+)_steps_(\d+)", metric)
    steps_raw = raw.get("steps")
    if m:
        if steps_raw is not None:
            raise ConfigError(f"{where}: objective: '{metric}' already names its step count; drop 'steps' or use metric: {m[1]}")
        metric, steps_raw = m[1], {int(m[2]): 1.0}
    if metric not in METRICS[kind]:
        raise ConfigError(f"{where}: objective.metric: '{metric}' is not computed for {cfg.data.name} data; choose one of "
                          f"{', '.join(METRICS[kind])} (optionally as <metric>_steps_N)." + _suggest(metric, METRICS[kind]))
    if steps_raw is None:
        raise ConfigError(f"{where}: objective.steps: required with metric '{metric}' (a list, or {{steps: weight}})")
    if isinstance(steps_raw, list):
        steps_raw = {s: 1.0 / len(steps_raw) for s in steps_raw}
    weights = {}
    top = 2 ** cfg.shortcut.max_steps_log2
    for s, w in ablate._mapping(f"{where}: objective.steps", steps_raw).items():
        s = int(s) if isinstance(s, (int, str)) and str(s).isdigit() else s
        if not isinstance(s, int) or s < 1 or s & (s - 1) or s > top:
            raise ConfigError(f"{where}: objective.steps: {s!r} is not a power of two from 1 to {top}")
        weights[f"{metric}_steps_{s}"] = float(_num(f"{where}: objective.steps.{s}", w))
    if not weights:
        raise ConfigError(f"{where}: objective.steps: at least one step count is required")
    direction = raw.get("direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"{where}: objective.direction: {direction!r} is not allowed; choose minimize or maximize")
    return Objective(weights, metric, tuple(sorted(int(k.rsplit("_", 1)[1]) for k in weights)), direction)


# ----------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class StudyPlan:
    """A spec resolved for one profile: the base config, checked space and objective, budget and settings."""
    spec: StudySpec
    profile: str
    preset: str
    portable: Mapping[str, Any]      # preset + ablation variant + spec overrides: what --export-best carries
    scale: Mapping[str, Any]         # profile settings and how the study evaluates: not exported
    base: Config
    objective: Objective
    space: tuple[Param, ...]         # the spec's space with this profile's re-ranged keys
    n_trials: int
    parallelism: int
    resources: Mapping[str, float]
    sampler: Mapping[str, Any]
    pruner: Mapping[str, Any]
    notes: tuple[str, ...] = field(default=())

    @property
    def study_name(self) -> str:
        return f"{self.spec.name}/{self.profile}"

    @property
    def mode(self) -> str:
        return "min" if self.objective.direction == "minimize" else "max"

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        by_key = {p.key: p for p in self.space}
        return {k: by_key[k].decode(v) if k in by_key else v for k, v in params.items()}

    def config(self, params: Mapping[str, Any]) -> Config:
        """The trial config for Optuna params."""
        return from_dict(deep_merge(deep_merge(self.portable, self.scale), self.decode(params)))

    def portable_config(self, params: Mapping[str, Any]) -> Config:
        """The tuned recipe without the profile's scale; carries the study's eval step counts only when the
        preset's do not fit the recipe (e.g. a smaller shortcut.max_steps_log2)."""
        d = deep_merge(self.portable, self.decode(params))
        try:
            return from_dict(d)
        except ConfigError:
            flat = flatten(unflatten(self.scale))
            return from_dict(deep_merge(d, {k: flat[k] for k in ("eval.steps", "eval.sweep_steps")}))

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {p.key: p.distribution() for p in self.space}

    def fingerprint(self) -> str:
        """What must not change under a running study: space, objective and the base config."""
        blob = json.dumps({"space": sorted((p.__dict__ for p in self.space), key=lambda d: d["key"]), "objective": dict(self.objective.terms),
                           "direction": self.objective.direction, "base": identity_dict(self.base)},
                          sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _ablation_layers(spec: StudySpec) -> tuple[str | None, list[Mapping[str, Any]]]:
    """(preset, [ablation base overrides, variant overrides]) of an ablation-variant base."""
    path = Path(spec.ablation)
    if not path.is_absolute() and (Path(spec.path).parent / path).exists():  # relative to the study spec first
        path = Path(spec.path).parent / path
    a = ablate.load_spec(path)
    names = [v.name for v in a.variants]
    if spec.variant not in names:
        raise ConfigError(f"{spec.path}: base.variant: '{spec.variant}' is not a variant of {path}; it has "
                          f"{', '.join(names)}." + _suggest(str(spec.variant), names))
    v = next(v for v in a.variants if v.name == spec.variant)
    return a.base_preset, [a.base_overrides, v.overrides]


def plan(spec: StudySpec, profile: str = ablate.DEFAULT_PROFILE, n_trials: int | None = None) -> StudyPlan:
    """Resolve the base config and check the space at its corners and the objective (ConfigError before any trial)."""
    if profile not in ablate.PROFILES:
        raise ConfigError(f"unknown profile '{profile}'; choose one of {', '.join(ablate.PROFILES)}."
                          + _suggest(profile, ablate.PROFILES))
    prof, adj = ablate.PROFILES[profile], dict(spec.profiles.get(profile) or {})
    where = f"{spec.path} (profile {profile})"
    preset, layers = spec.preset, []
    if spec.ablation:
        preset, layers = _ablation_layers(spec)
    preset = preset or prof.preset
    portable: dict[str, Any] = {}
    for layer in [preset_delta(preset), *layers, spec.overrides]:
        portable = deep_merge(portable, layer)
    resources = {**prof.resources, **spec.resources, **ablate._resources(f"{where}: resources", adj.get("resources"))}
    if resources.get("cpu", 0) <= 0 and resources.get("gpu", 0) <= 0:
        raise ConfigError(f"{where}: resources: a trial needs cpu > 0 or gpu > 0, got {resources}")
    pruner = {**spec.pruner, **ablate._mapping(f"{where}: pruner", adj.get("pruner"))}
    sampler = {**spec.sampler, **ablate._mapping(f"{where}: sampler", adj.get("sampler"))}
    every = pruner.get("every_steps", 0)
    space = {x.key: x for x in spec.space}
    for k, v in flatten_space(ablate._mapping(f"{where}: space", adj.get("space"))).items():
        if k not in space:
            raise ConfigError(f"{where}: profiles.{profile}.space: '{k}' is not in the spec's space; a profile may only "
                              f"re-range searched keys ({', '.join(space)})." + _suggest(k, space))
        try:
            space[k] = parse_param(k, v)
        except ConfigError as e:
            raise ConfigError(f"{where}: profiles.{profile}.{e}") from None
    # How the study evaluates (intermediate evals for pruning, no diagnostics or sweeps the objective ignores):
    # settings of the study, not of the tuned recipe, so they stay out of --export-best.
    study_eval = {"eval.every_steps": _posint(f"{where}: pruner.every_steps", every, 0), "eval.diagnostics": False,
                  "eval.guidance_sweep": [], "run.seed": spec.seed}
    # Data kind and step budget decide which metrics exist; eval steps are the study's to set, so neutral here.
    head = from_dict_where(where, deep_merge(portable, {**prof.overrides, "eval.steps": [1], "eval.sweep_steps": [1]}))
    objective = parse_objective(spec.objective_raw, head, where)
    study_eval["eval.steps"] = list(objective.steps)
    study_eval["eval.sweep_steps"] = [min(objective.steps)]
    scale: dict[str, Any] = {}
    for layer in [dict(prof.overrides), {"run.threads": max(1, int(resources.get("cpu", 1)))}, study_eval,
                  ablate._overrides(f"{where}: overrides", adj.get("overrides"))]:
        scale = deep_merge(scale, layer)
    clash = sorted(set(flatten(unflatten(scale))) & set(space))
    if clash:
        raise ConfigError(f"{where}: the profile or study settings fix {', '.join(clash)}, which the space searches")
    base = from_dict_where(f"{where}: base", deep_merge(portable, scale))
    if pruner.get("type", "none") != "none":
        if not every:
            raise ConfigError(f"{where}: pruner.every_steps: required with pruner type {pruner['type']} "
                              "(intermediate evaluations every N training steps)")
        if every >= base.run.steps:
            raise ConfigError(f"{where}: pruner.every_steps: {every} leaves no intermediate evaluation before "
                              f"run.steps={base.run.steps}; lower it")
    p = StudyPlan(spec, profile, preset, portable, scale, base, objective, tuple(space.values()),
                  n_trials or _posint(f"{where}: n_trials", adj.get("n_trials", spec.n_trials)),
                  _posint(f"{where}: parallelism", adj.get("parallelism", spec.parallelism)), resources,
                  sampler, pruner, tuple(x for x in [adj.get("note")] if x))
    check_space(p)
    make_sampler(p, 0), make_pruner(p)  # shape errors of sampler/pruner settings surface now
    for i, point in enumerate(spec.enqueue):
        check_point(p, point, f"{where}: enqueue[{i}]")
    return p


def from_dict_where(where: str, d: Mapping[str, Any]) -> Config:
    try:
        return from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def check_space(p: StudyPlan) -> None:
    """Every bound and choice must give a valid config; all corners too when there are few of them."""
    where = f"{p.spec.path} (profile {p.profile}): space"
    for prm in p.space:
        for v in prm.extremes():
            try:
                p.config({prm.key: _encode(v)})
            except ConfigError as e:
                what = "choice" if prm.kind == "categorical" else ("low" if v == prm.low else "high")
                raise ConfigError(f"{where}.{prm.key}: {what} {v!r} is not allowed: {e}") from None
    combos = math.prod(len(prm.extremes()) for prm in p.space)
    if combos <= CORNER_LIMIT:
        for vals in product(*(prm.extremes() for prm in p.space)):
            point = {prm.key: _encode(v) for prm, v in zip(p.space, vals)}
            try:
                p.config(point)
            except ConfigError as e:
                raise ConfigError(f"{where}: the corner {p.decode(point)} gives an invalid config: {e}") from None


def check_point(p: StudyPlan, point: Mapping[str, Any], where: str) -> None:
    """An enqueued trial: known keys, values inside the space, a valid config."""
    dists = p.distributions()
    for k, v in point.items():
        if k not in dists:
            raise ConfigError(f"{where}: '{k}' is not a searched key; the space has {', '.join(dists)}." + _suggest(k, dists))
        if not dists[k]._contains(dists[k].to_internal_repr(_encode(v))):
            raise ConfigError(f"{where}: {k}={v!r} lies outside the space ({next(x for x in p.space if x.key == k).describe()})")
    try:
        p.config({k: _encode(v) for k, v in point.items()})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def make_sampler(p: StudyPlan, n_existing: int) -> optuna.samplers.BaseSampler:
    """Seeded sampler; the seed moves on with the trials already in the study so a resumed study draws new points."""
    s = dict(p.sampler)
    kind = s.pop("type", "tpe")
    seed = _posint(f"{p.spec.path}: sampler.seed", s.pop("seed", 0), 0) + n_existing
    if kind == "random":
        ablate._check_keys(f"{p.spec.path}: sampler", s, ())
        return optuna.samplers.RandomSampler(seed=seed)
    if kind != "tpe":
        raise ConfigError(f"{p.spec.path}: sampler.type: {kind!r} is not allowed; choose tpe or random")
    ablate._check_keys(f"{p.spec.path}: sampler", s, ("n_startup_trials", "multivariate", "constant_liar"))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.get("n_startup_trials", 5),
                                      multivariate=s.get("multivariate", True),
                                      constant_liar=s.get("constant_liar", p.parallelism > 1))


def make_pruner(p: StudyPlan) -> optuna.pruners.BasePruner:
    s = dict(p.pruner)
    kind = s.pop("type", "none")
    s.pop("every_steps", None)
    allowed = {"none": (), "median": ("n_startup_trials", "n_warmup_steps", "n_min_trials"),
               "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate")}
    if kind not in allowed:
        raise ConfigError(f"{p.spec.path}: pruner.type: {kind!r} is not allowed; choose one of {', '.join(allowed)}")
    ablate._check_keys(f"{p.spec.path}: pruner", s, allowed[kind] + ("every_steps",))
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.get("n_startup_trials", 3),
                                           n_warmup_steps=s.get("n_warmup_steps", 0), n_min_trials=s.get("n_min_trials", 1))
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=s.get("min_resource", "auto"),
                                                      reduction_factor=s.get("reduction_factor", 3),
                                                      min_early_stopping_rate=s.get("min_early_stopping_rate", 0))
    return optuna.pruners.NopPruner()


# ----------------------------------------------------------------------------------------------- storage
def storage_root(path: str | Path | None = None) -> Path:
    """Root of study trial dirs, Ray results and the default Optuna DB: --storage, $ISM_STORAGE, or runs/study."""
    return Path(path or os.environ.get("ISM_STORAGE") or "runs/study").resolve()


def storage_url(url: str | None, root: Path) -> str:
    """Optuna storage: --optuna-storage, $OPTUNA_STORAGE (any RDB URL), or a sqlite file under the storage root."""
    url = url or os.environ.get("OPTUNA_STORAGE")
    if url:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            url = "sqlite:///" + str(Path(url[len("sqlite:///"):]).resolve())
        return url
    return f"sqlite:///{root / 'optuna.db'}"


def rdb(url: str) -> optuna.storages.RDBStorage:
    # A sqlite file shared with readers (dashboard, reports) needs a lock timeout longer than sqlite's 5 s default.
    kw = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kw)


def study_dir(root: Path, p: StudyPlan) -> Path:
    return root / "studies" / p.spec.name / p.profile


def open_study(p: StudyPlan, url: str, create: bool = True) -> optuna.Study:
    """Load (or create) the plan's study; refuse a study made from a different space, objective or base."""
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if not db.exists() and not create:
            raise ConfigError(f"no study '{p.study_name}' in {url} (no such file); run `ism study {p.spec.path} "
                              f"--profile {p.profile}` first")
        db.parent.mkdir(parents=True, exist_ok=True)
    storage = rdb(url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if p.study_name not in names and not create:
        raise ConfigError(f"no study '{p.study_name}' in {url}; run `ism study {p.spec.path} --profile {p.profile}` first")
    n = len(storage.get_all_trials(storage.get_study_id_from_name(p.study_name), deepcopy=False)) if p.study_name in names else 0
    study = optuna.create_study(storage=storage, study_name=p.study_name, direction=p.objective.direction,
                                sampler=make_sampler(p, n), pruner=make_pruner(p), load_if_exists=True)
    if study.direction.name.lower() != p.objective.direction:
        raise ConfigError(f"study '{p.study_name}' in {url} was created to {study.direction.name.lower()}; the spec says "
                          f"{p.objective.direction}. Rename the study (name:) or delete it")
    fp = study.user_attrs.get("ism.fingerprint")
    if fp is None:
        for k, v in {"ism.fingerprint": p.fingerprint(), "ism.spec": p.spec.name, "ism.profile": p.profile,
                     "ism.objective": p.objective.describe(), "ism.preset": p.preset,
                     "ism.space": {x.key: x.describe() for x in p.space}}.items():
            study.set_user_attr(k, v)
        for point in p.spec.enqueue:
            study.enqueue_trial({k: _encode(v) for k, v in point.items()}, skip_if_exists=True)
    elif fp != p.fingerprint():
        raise ConfigError(f"study '{p.study_name}' in {url} was made from a different space, objective or base config "
                          f"(fingerprint {fp}, the spec now gives {p.fingerprint()}); give the study a new name: "
                          f"or delete it: optuna delete-study --storage {url} --study-name '{p.study_name}'")
    return study


def requeue_stale(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by an interrupted driver go back to WAITING: ask() hands them out again, same number and params."""
    storage = study._storage  # the RDB storage create_study was given; Study exposes no public accessor
    sid = storage.get_study_id_from_name(study.study_name)
    back = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tid = storage.get_trial_id_from_study_id_trial_number(sid, t.number)
        storage.set_trial_state_values(tid, TrialState.WAITING)
        storage.set_trial_user_attr(tid, "ism.requeued", int(t.user_attrs.get("ism.requeued", 0)) + 1)
        back.append(t.number)
    return back


def counts(study: optuna.Study) -> dict[str, int]:
    out = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


def check_driver(study: optuna.Study) -> None:
    """One driver per study: refuse when another live `ism study` on this host holds it."""
    d = study.user_attrs.get("ism.driver") or {}
    if d.get("host") == socket.gethostname() and d.get("pid") not in (None, os.getpid()):
        try:
            os.kill(int(d["pid"]), 0)
        except OSError:
            return
        raise ConfigError(f"study '{study.study_name}' is being run by another `ism study` (pid {d['pid']}); "
                          "wait for it or stop it first")


# ----------------------------------------------------------------------------------------------- export
def export_best(p: StudyPlan, url: str, out: Path | None = None, root: Path | None = None) -> Path:
    """Write the best trial as a delta config (preset + changed keys) that config.resolve and ablation bases load."""
    study = open_study(p, url, create=False)
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study '{p.study_name}' has no completed trial yet; run it first") from None
    cfg = p.portable_config(best.params)
    preset_cfg = from_dict(preset_delta(p.preset))
    delta = unflatten({k: list(b) if isinstance(b, tuple) else b for k, (_, b) in diff(preset_cfg, cfg).items()})
    out = out or (root or storage_root()) / "best" / f"{p.spec.name}-{p.profile}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    params = {k: v for k, v in p.decode(best.params).items()}
    head = [f"# Best trial #{best.number} of study '{p.study_name}' ({p.spec.path}): {p.objective.describe()} = {best.value:.6g}",
            f"# tuned: {json.dumps(params)}",
            "# Load: ism train -c THIS_FILE (or config.resolve(files=[THIS_FILE])); as an ablation base:",
            f"#   base: {{preset: {p.preset}, overrides: <the sections below>}}"]
    out.write_text("\n".join(head) + "\n" + yaml.safe_dump({"preset": p.preset, **delta}, sort_keys=False))
    return out


# ----------------------------------------------------------------------------------------------- listing
def describe_plan(p: StudyPlan, url: str) -> str:
    """The --dry-run listing: base, space, objective, budget, pruning, the study's state and an estimated cost."""
    preset_cfg = from_dict(preset_delta(p.preset))
    lines = [f"study {p.study_name} ({p.spec.path}) - preset {p.preset} - storage {url}"]
    if p.spec.description:
        lines.append(f"  {p.spec.description}")
    d = {k: v for k, v in diff(preset_cfg, p.base).items() if k not in NON_IDENTITY_KEYS}
    lines.append("base vs preset: " + (", ".join(f"{k}: {ablate._fmt_v(a)} -> {ablate._fmt_v(b)}" for k, (a, b) in d.items()) or "(the preset)"))
    lines.append(f"base run id {run_id(p.base)}; space ({len(p.space)} keys):")
    lines += [f"  {x.key:<32} {x.describe()}" for x in p.space]
    lines.append(f"objective: {p.objective.describe()}")
    lines.append(f"trials {p.n_trials}, parallelism {p.parallelism}, resources per trial {dict(p.resources)}; "
                 f"sampler {dict(p.sampler) or {'type': 'tpe'}}, pruner {dict(p.pruner) or {'type': 'none'}}")
    lines += [f"  note: {n}" for n in p.notes]
    if p.spec.enqueue:
        lines.append(f"enqueued first: {list(p.spec.enqueue)}")
    done = 0
    try:
        study = open_study(p, url, create=False)
        c = counts(study)
        done = sum(c[s.name] for s in FINISHED)
        lines.append("existing study: " + ", ".join(f"{v} {k.lower()}" for k, v in c.items() if v))
    except ConfigError as e:
        lines.append(f"existing study: none ({str(e).split(';')[0]})" if "no study" in str(e) else f"existing study: {e}")
    est = ablate.estimate_s(p.base, p.profile)
    left = max(0, p.n_trials - done)
    cpus = ablate.PROFILES[p.profile].cpus  # the local Ray of CPU profiles caps how many trials run at once
    k = p.parallelism if p.resources.get("gpu") or not cpus else \
        max(1, min(p.parallelism, cpus // max(1, int(p.resources.get("cpu", 1)))))
    lines.append(f"estimated cost: ~{ablate._fmt_s(est)} per full trial; {left} to run -> ~{ablate._fmt_s(est * left / k)} "
                 f"wall at {k} at once (pruning shortens it)")
    return "\n".join(lines)


def load_study(spec_path: str | Path, profile: str = ablate.DEFAULT_PROFILE, url: str | None = None,
               storage: str | Path | None = None) -> optuna.Study:
    """The stored study of a spec and profile (report generator entry point)."""
    p = plan(load_spec(spec_path), profile)
    return open_study(p, storage_url(url, storage_root(storage)), create=False)


# ----------------------------------------------------------------------------------------------- trials (Ray workers)
def run_trial(config: dict, tracking_uri: str, objective: dict, train_fn=None) -> None:
    """Body of one study trial: train with intermediate evaluations, report the objective to Tune, log to MLflow."""
    import torch
    from ray import tune as rt
    from ism import tracking
    from ism.evaluate import make_evaluator
    from ism.train import Diverged, train
    meta = config["_ism"]
    cfg = from_dict(meta["cfg"])
    torch.set_num_threads(max(1, cfg.run.threads))
    obj = Objective(objective["terms"], objective["metric"], tuple(objective["steps"]), objective["direction"])
    log = tracking.TrialLog(tracking_uri, meta["mlflow_run_id"])
    log.running()

    def callback(kind: str, ev: dict) -> None:
        if kind == "metrics":
            log.metrics(ev["step"], ev["metrics"])
        elif kind == "eval":
            value = obj.value(ev["metrics"])
            log.eval_metrics(ev["step"], {**ev["metrics"], METRIC: value})
            if ev["step"] < cfg.run.steps:  # the final value is reported once training and logging are done
                rt.report({METRIC: value, "eval_step": ev["step"], "final": 0})

    run_dir = Path(meta["trial_dir"])
    try:
        summary = (train_fn or train)(cfg, run_dir, callback, make_evaluator(cfg))
    except Diverged as e:  # a property of the sampled point, not a fault: no retry, the study records a FAIL
        log.tag("ism.error", str(e))
        rt.report({METRIC: float("nan"), "eval_step": e.step, "final": 1, "diverged": 1})
        return
    except BaseException as e:
        log.tag("ism.error", f"{type(e).__name__}: {e}"[:5000])
        raise
    value = obj.value(summary["metrics"])
    log.replay_stats(run_dir / "stats.jsonl")
    log.eval_metrics(summary["steps"], {**summary["metrics"], METRIC: value,
                                        **{k: summary[k] for k in ("wall_time_s", "peak_mem_mb") if k in summary}})
    log.artifacts(run_dir)
    rt.report({METRIC: value, "eval_step": summary["steps"], "final": 1})


# ----------------------------------------------------------------------------------------------- driver
class Bookkeeper:
    """Driver-side records of trials: run dirs, MLflow child runs, Optuna user attrs, terminal progress lines."""

    def __init__(self, p: StudyPlan, study: optuna.Study, root: Path, uri: str, parent: str, exp: str, git: str):
        self.p, self.study, self.root, self.uri, self.parent, self.exp, self.git = p, study, root, uri, parent, exp, git
        self.start_time = time.time()
        self.told = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}

    def client(self):
        from ism import tracking
        return tracking.client(self.uri)

    def start(self, ot: optuna.Trial) -> dict[str, Any]:
        """Meta of a trial about to run: its config, run dir and MLflow child run (reused when the trial resumes)."""
        from ism import tracking
        cfg = self.p.config(ot.params)
        rid = run_id(cfg)
        tdir = study_dir(self.root, self.p) / "trials" / f"{ot.number:04d}-{rid}"
        params = self.p.decode(ot.params)
        tags = {"ism.kind": "trial", "ism.study": self.p.spec.name, "ism.spec": self.p.spec.name,
                "ism.profile": self.p.profile, "ism.variant": f"trial-{ot.number}", "ism.seed": str(cfg.run.seed),
                "ism.run_id": rid, "ism.trial_number": str(ot.number), "ism.git_commit": self.git,
                "ism.optuna_study": self.p.study_name, "ism.trial_state": "RUNNING",
                "ism.params": json.dumps(params), "ism.components": ",".join(
                    k for k, on in ablate.components(cfg).items() if on) or "none"}
        child = tracking.child_run(self.client(), self.exp, self.parent, tdir, f"trial-{ot.number:04d}", tags, flatten(cfg))
        tracking.set_status(self.client(), child, "SCHEDULED")
        for k, v in {"ism.run_id": rid, "ism.mlflow_run_id": child, "ism.trial_dir": str(tdir)}.items():
            ot.set_user_attr(k, v)
        again = " (resumed)" if ot.user_attrs.get("ism.requeued") else ""
        self.say(f"start #{ot.number}{again} {json.dumps(params)}")
        return {"number": ot.number, "cfg": to_dict(cfg),
                "trial_dir": str(tdir), "mlflow_run_id": child}

    def finish(self, ot, state: str, value: float | None, reason: str | None = None, quiet: bool = False) -> None:
        """Settle a trial's MLflow run: COMPLETE/PRUNED finish, FAIL fails, INTERRUPTED is killed (it will resume)."""
        from ism import tracking
        child = ot.user_attrs.get("ism.mlflow_run_id")
        if state in self.told:
            self.told[state] += 1
        if child:
            c = self.client()
            tdir = Path(ot.user_attrs.get("ism.trial_dir", ""))
            if state in ("PRUNED", "FAIL") and tdir.is_dir():  # stopped mid-run: keep what it wrote (when visible here)
                log = tracking.TrialLog(self.uri, child)
                log.replay_stats(tdir / "stats.jsonl")
                log.artifacts(tdir)
            tracking._retry(c.set_tag, child, "ism.trial_state", state)
            status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}.get(state, "KILLED")
            tracking.set_status(c, child, status, reason)
        if quiet:
            return
        self.progress()
        val = "" if value is None or not math.isfinite(value) else f" objective {value:.5g}"
        self.say(f"{state.lower()} #{ot.number}{val}" + (f": {reason}" if reason else ""))

    def reconcile(self) -> int:
        """Settle MLflow runs of trials the study finished while the driver died before logging it; returns how many."""
        from ism import tracking
        n = 0
        for t in self.study.get_trials(deepcopy=False, states=FINISHED):
            child = t.user_attrs.get("ism.mlflow_run_id")
            if not child or tracking.status(self.client(), child) is None:
                continue
            if self.client().get_run(child).data.tags.get("ism.trial_state") != t.state.name:
                self.finish(t, t.state.name, t.value, None, quiet=True)
                n += 1
        return n

    def progress(self) -> None:
        from ism import tracking
        c = counts(self.study)
        done = sum(c[s.name] for s in FINISHED)
        metrics = {"trials_finished": done, "trials_pruned": c["PRUNED"], "trials_failed": c["FAIL"]}
        try:
            metrics["best_objective"] = self.study.best_value
        except ValueError:
            pass
        tracking.log_metrics(self.client(), self.parent, metrics, step=done)

    def say(self, event: str) -> None:
        c = counts(self.study)
        done = sum(c[s.name] for s in FINISHED)
        try:
            best = f", best {self.study.best_value:.5g} (#{self.study.best_trial.number})"
        except ValueError:
            best = ""
        mins = (time.time() - self.start_time) / 60
        print(f"[{self.p.study_name}] {done}/{self.p.n_trials} done ({c['PRUNED']} pruned, {c['FAIL']} failed), "
              f"{c['RUNNING']} running{best} | {mins:.1f} min | {event}", file=sys.stderr, flush=True)


_CLASSES: dict[str, type] = {}


def _tune_classes() -> tuple[type, type]:
    """(StudySearch, PruneScheduler), built on first use: ray.tune takes seconds to import, and --dry-run,
    --export-best and spec checks do not need it."""
    if _CLASSES:
        return _CLASSES["search"], _CLASSES["scheduler"]
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """OptunaSearch on a study we opened: our pruner (OptunaSearch would make one with NopPruner), and trial
        endings told by what happened (OptunaSearch tells COMPLETE with the last intermediate value when Tune stops a
        trial on interrupt, and COMPLETE for an errored trial that had reported)."""

        def __init__(self, study: optuna.Study, p: StudyPlan, books: Bookkeeper):
            self._given, self._books, self._pruned, self._requeue, self._step = study, books, set(), [], {}
            super().__init__(space=p.distributions(), metric=METRIC, mode=p.mode, sampler=study.sampler,
                             study_name=study.study_name)

        def _setup_study(self, mode):
            self._ot_study = self._given

        def suggest(self, trial_id: str):
            for _ in range(20):  # a sampled point whose config is invalid (a cross-key rule) fails and is redrawn
                params = super().suggest(trial_id)
                ot = self._ot_trials[trial_id]
                try:
                    return {**params, "_ism": self._books.start(ot)}
                except ConfigError as e:
                    self._ot_study.tell(ot, state=TrialState.FAIL)
                    self._books.finish(ot, "FAIL", None, f"invalid config: {e}")
                    del self._ot_trials[trial_id]
            raise ConfigError(f"{self._given.study_name}: 20 sampled points in a row gave invalid configs; narrow the space")

        def on_trial_result(self, trial_id: str, result: dict):
            pass  # intermediate values reach Optuna through the scheduler, which sees results first and may stop the trial

        def report(self, trial_id: str, result: dict) -> bool:
            """Store an intermediate value in the study; True when the study's pruner prunes the trial."""
            ot = self._ot_trials.get(trial_id)
            if ot is None or result.get("final") or METRIC not in result:
                return False
            ot.report(float(result[METRIC]), int(result["eval_step"]))
            self._step[trial_id] = int(result["eval_step"])
            if ot.should_prune():
                self._pruned.add(trial_id)
                return True
            return False

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            ot = self._ot_trials.get(trial_id)
            if ot is None or trial_id in self._completed_trials:
                return
            self._completed_trials.add(trial_id)
            if trial_id in self._pruned:
                self._ot_study.tell(ot, state=TrialState.PRUNED, skip_if_finished=True)
                self._books.finish(ot, "PRUNED", None, f"pruned at step {self._step.get(trial_id)}")
            elif error:
                self._ot_study.tell(ot, state=TrialState.FAIL, skip_if_finished=True)
                self._books.finish(ot, "FAIL", None)
            elif result and result.get("final"):
                value = float(result[METRIC])
                if math.isfinite(value):
                    ot.report(value, int(result["eval_step"]))
                    self._ot_study.tell(ot, value, skip_if_finished=True)
                    self._books.finish(ot, "COMPLETE", value)
                else:
                    self._ot_study.tell(ot, state=TrialState.FAIL, skip_if_finished=True)
                    self._books.finish(ot, "FAIL", None, f"diverged at step {result.get('eval_step')}")
            else:  # stopped by an interrupt before its final result: it resumes on the next run
                self._requeue.append(ot)

        def unfinished(self) -> list:
            """Trials asked from the study but never told (interrupted)."""
            return [ot for tid, ot in self._ot_trials.items() if tid not in self._completed_trials] + self._requeue

        # The Optuna storage is the state; Ray never restores this searcher, so its checkpoint is only a note.
        def save(self, checkpoint_path: str):
            Path(checkpoint_path).write_text(json.dumps({"study": self._given.study_name, "state": "optuna storage"}))

        def restore(self, checkpoint_path: str):
            raise NotImplementedError("a study resumes by rerunning `ism study` (state lives in the Optuna storage)")

        def __getstate__(self):  # Tune pickles its config (tuner.pkl); the study, MLflow client and trials stay here
            return {"_metric": self._metric, "_mode": self._mode, "study_name": self._given.study_name}

    class PruneScheduler(FIFOScheduler):
        """Stops a trial when the study's pruner says so (Tune schedulers keep their state in memory; Optuna's
        pruners read the intermediate values stored in the study, so decisions hold across restarts)."""

        def __init__(self, search: StudySearch):
            super().__init__()
            self.search = search

        def on_trial_result(self, tune_controller, trial, result):
            return TrialScheduler.STOP if self.search.report(trial.trial_id, result) else TrialScheduler.CONTINUE

        def __getstate__(self):
            return {}

    _CLASSES.update(search=StudySearch, scheduler=PruneScheduler)
    return StudySearch, PruneScheduler


def run_study(p: StudyPlan, url: str, root: Path, tracking_uri: str | None = None, train_fn=None) -> int:
    """Run (or continue) a study to p.n_trials finished trials; 0 when done, 1 when trials failed, 130 when interrupted."""
    from ray import tune as rt
    from ray.tune.logger import JsonLoggerCallback
    from ism import tracking, tune
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    study = open_study(p, url)
    check_driver(study)
    study.set_user_attr("ism.driver", {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
    back = requeue_stale(study)
    uri = tracking.tracking_uri(tracking_uri)
    c = tracking.client(uri)
    git = tune.git_commit()
    tags = {"ism.kind": "study", "ism.spec": p.spec.name, "ism.study": p.spec.name, "ism.profile": p.profile,
            "ism.sweep_id": p.fingerprint(), "ism.git_commit": git, "ism.preset": p.preset,
            "ism.optuna_storage": url, "ism.optuna_study": p.study_name, "ism.objective": p.objective.describe()}
    params = {"n_trials": p.n_trials, "parallelism": p.parallelism, "direction": p.objective.direction,
              "objective": json.dumps(dict(p.objective.terms)), "space": json.dumps({x.key: x.describe() for x in p.space}),
              "sampler": json.dumps(dict(p.sampler)), "pruner": json.dumps(dict(p.pruner)),
              "resources": json.dumps(dict(p.resources)), "profile": p.profile, "preset": p.preset}
    prior = study.user_attrs.get("ism.mlflow_parent") or {}
    exp, parent = tracking.start_parent(c, f"ism-study/{p.spec.name}", p.study_name.replace("/", "-"), tags, params,
                                        {"spec.yaml": p.spec.text, "base_config.yaml": dump_yaml(p.base)},
                                        resume_run_id=prior.get(uri))
    study.set_user_attr("ism.mlflow_parent", {**prior, uri: parent})
    books = Bookkeeper(p, study, root, uri, parent, exp, git)
    for n in back:
        books.say(f"#{n} was interrupted: re-queued, it resumes from its last checkpoint")
    if books.reconcile():
        books.progress()
    done = sum(counts(study)[s.name] for s in FINISHED)
    todo = max(0, p.n_trials - done)
    books.say(f"storage {url}; MLflow {uri} experiment ism-study/{p.spec.name} run {parent}; {todo} trial(s) to run")
    if todo == 0:
        books.progress()
        tracking.set_status(c, parent, "FINISHED")
        return 0
    StudySearch, PruneScheduler = _tune_classes()
    search = StudySearch(study, p, books)
    interrupted = False
    errors: list[str] = []
    sdir = study_dir(root, p)
    try:
        with tune.ray_session(num_cpus=ablate.PROFILES[p.profile].cpus or None):
            tune.check_resources(dict(p.resources))
            trainable = rt.with_resources(
                rt.with_parameters(run_trial, tracking_uri=uri, train_fn=train_fn,
                                   objective={"terms": dict(p.objective.terms), "metric": p.objective.metric,
                                              "steps": list(p.objective.steps), "direction": p.objective.direction}),
                {k: v for k, v in p.resources.items() if v})
            tuner = rt.Tuner(trainable, param_space={}, tune_config=rt.TuneConfig(
                search_alg=search, scheduler=PruneScheduler(search), num_samples=todo,
                max_concurrent_trials=p.parallelism, reuse_actors=True,
                trial_name_creator=lambda t: f"trial-{t.config['_ism']['number']:04d}",
                trial_dirname_creator=lambda t: f"trial-{t.config['_ism']['number']:04d}-{t.trial_id}"),
                run_config=rt.RunConfig(name=f"ray-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(sdir / "ray"),
                                        verbose=0, callbacks=[JsonLoggerCallback()],
                                        failure_config=rt.FailureConfig(max_failures=p.spec.max_failures)))
            results = tuner.fit()
            errors = [tune._short_error(r.error) for r in results if r.error is not None]
    except KeyboardInterrupt:
        interrupted = True
    stale = search.unfinished()
    requeue_stale(study)
    for ot in stale:
        books.finish(ot, "INTERRUPTED", None, "the study was interrupted; rerun to resume this trial")
    interrupted = interrupted or bool(stale)
    for e in errors:
        books.say(f"trial error: {e}")
    c_ = counts(study)
    tracking.set_status(c, parent, "KILLED" if interrupted else "FINISHED")
    study.set_user_attr("ism.driver", {})
    books.progress()
    books.say("interrupted: rerun the same command to continue" if interrupted else "study finished")
    return 130 if interrupted else 1 if c_["FAIL"] else 0


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ism study", description="Run an Optuna study as Ray Tune trials tracked in MLflow. "
                                 "Rerunning the same command continues an interrupted study.")
    ap.add_argument("spec", help="study spec, e.g. studies/wavelet.yaml")
    ap.add_argument("--profile", default=os.environ.get("PROFILE") or ablate.DEFAULT_PROFILE,
                    help=f"one of {', '.join(ablate.PROFILES)} (default {ablate.DEFAULT_PROFILE}; env PROFILE)")
    ap.add_argument("--n-trials", type=int, default=None, help="trial budget (finished trials in all), overrides the spec")
    ap.add_argument("--dry-run", action="store_true", help="show the base, space, objective, study state and cost; run nothing")
    ap.add_argument("--export-best", action="store_true", help="write the best trial as a delta config YAML and exit")
    ap.add_argument("--out", default=None, help="path for --export-best (default <storage>/best/<name>-<profile>.yaml)")
    ap.add_argument("--storage", default=None, help="root of trial dirs and Ray results (default runs/study; env ISM_STORAGE)")
    ap.add_argument("--optuna-storage", default=None, help="Optuna RDB URL (default $OPTUNA_STORAGE or sqlite <storage>/optuna.db)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite under mlruns/)")
    args = ap.parse_args(argv)
    if args.n_trials is not None and args.n_trials < 1:
        raise ConfigError(f"--n-trials: expected an integer >= 1, got {args.n_trials}")
    p = plan(load_spec(args.spec), args.profile, args.n_trials)
    root = storage_root(args.storage)
    url = storage_url(args.optuna_storage, root)
    if args.dry_run:
        print(describe_plan(p, url))
        return 0
    if args.export_best:
        path = export_best(p, url, Path(args.out) if args.out else None, root)
        print(f"ism study: best config of {p.study_name} -> {path}")
        return 0
    return run_study(p, url, root, tracking_uri=args.tracking_uri)


if __name__ == "__main__":
    sys.exit(main())
