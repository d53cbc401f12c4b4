"""A study spec resolved for one profile: the base config, the space re-ranged and checked at its corners, the
objective, budget, sampler and pruner (a ConfigError before any trial)."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Mapping

import optuna

from ism.conf import profiles
from ism.conf import specs as S
from ism.ablation.plan import load_spec as load_ablation_spec
from ism.conf.config import Config, ConfigError, deep_merge, flatten, from_dict, identity_dict, preset_delta, unflatten
from ism.errors import suggest
from ism.conf.profiles import DEFAULT_PROFILE
from ism.study.spec import Param, StudySpec, _encode, flatten_space, parse_objective, parse_param
from ism.ablation.trial_objective import Objective

CORNER_LIMIT = 64                    # check every corner of the space when there are at most this many


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
    enqueue: tuple[Mapping[str, Any], ...] = field(default=())  # trials run first: the profile's list, else the spec's

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
    a = load_ablation_spec(path)
    names = [v.name for v in a.variants]
    if spec.variant not in names:
        raise ConfigError(f"{spec.path}: base.variant: '{spec.variant}' is not a variant of {path}; it has "
                          f"{', '.join(names)}." + suggest(str(spec.variant), names))
    v = next(v for v in a.variants if v.name == spec.variant)
    return a.base_preset, [a.base_overrides, v.overrides]


def plan(spec: StudySpec, profile: str = DEFAULT_PROFILE, n_trials: int | None = None) -> StudyPlan:
    """Resolve the base config and check the space at its corners and the objective (ConfigError before any trial)."""
    prof, adj = profiles.get(profile), dict(spec.profiles.get(profile) or {})
    where = f"{spec.path} (profile {profile})"
    preset, layers = spec.preset, []
    if spec.ablation:
        preset, layers = _ablation_layers(spec)
    preset = preset or prof.preset
    portable: dict[str, Any] = {}
    for layer in [preset_delta(preset), *layers, spec.overrides]:
        portable = deep_merge(portable, layer)
    resources = {**prof.resources, **spec.resources, **S.resources(f"{where}: resources", adj.get("resources"))}
    S.check_trial_resources(where, resources)
    pruner = _layer(spec.pruner, S.mapping(f"{where}: pruner", adj.get("pruner")))
    sampler = _layer(spec.sampler, S.mapping(f"{where}: sampler", adj.get("sampler")))
    every = pruner.get("every_steps", 0)
    space = {x.key: x for x in spec.space}
    for k, v in flatten_space(S.mapping(f"{where}: space", adj.get("space"))).items():
        if k not in space:
            raise ConfigError(f"{where}: profiles.{profile}.space: '{k}' is not in the spec's space; a profile may only "
                              f"re-range searched keys ({', '.join(space)})." + suggest(k, space))
        try:
            space[k] = parse_param(k, v)
        except ConfigError as e:
            raise ConfigError(f"{where}: profiles.{profile}.{e}") from None
    # How the study evaluates (intermediate evals for pruning, no diagnostics or sweeps the objective ignores):
    # settings of the study, not of the tuned recipe, so they stay out of --export-best.
    study_eval = {"eval.every_steps": S.integer(f"{where}: pruner.every_steps", every, 0), "eval.diagnostics": False,
                  "eval.guidance_sweep": [], "run.seed": spec.seed}
    # Data kind and step budget decide which metrics exist; eval steps are the study's to set, so neutral here.
    head = from_dict_where(where, deep_merge(portable, {**prof.overrides, "eval.steps": [1], "eval.sweep_steps": [1]}))
    objective = parse_objective(spec.objective_raw, head, where)
    study_eval["eval.steps"] = list(objective.steps)
    study_eval["eval.sweep_steps"] = [min(objective.steps)]
    scale: dict[str, Any] = {}
    for layer in [dict(prof.overrides), {"run.threads": max(1, int(resources.get("cpu", 1)))}, study_eval,
                  S.overrides(f"{where}: overrides", adj.get("overrides"))]:
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
                  n_trials or S.integer(f"{where}: n_trials", adj.get("n_trials", spec.n_trials)),
                  S.integer(f"{where}: parallelism", adj.get("parallelism", spec.parallelism)), resources,
                  sampler, pruner, tuple(x for x in [adj.get("note")] if x), _enqueue(where, adj, spec))
    check_space(p)
    make_sampler(p, 0), make_pruner(p)  # shape errors of sampler/pruner settings surface now
    for i, point in enumerate(p.enqueue):
        check_point(p, point, f"{where}: enqueue[{i}]")
    return p


def _layer(spec_part: Mapping[str, Any], profile_part: Mapping[str, Any]) -> dict[str, Any]:
    """A profile's sampler/pruner settings over the spec's; a profile naming another type replaces them whole."""
    if "type" in profile_part and profile_part["type"] != spec_part.get("type"):
        return dict(profile_part)
    return {**spec_part, **profile_part}


def _enqueue(where: str, adj: Mapping[str, Any], spec: StudySpec) -> tuple[Mapping[str, Any], ...]:
    """A profile's own enqueue list (e.g. a fixed grid on a small machine) replaces the spec's."""
    if "enqueue" not in adj:
        return spec.enqueue
    points = adj["enqueue"]
    if not isinstance(points, list) or not all(isinstance(e, Mapping) for e in points):
        raise ConfigError(f"{where}: enqueue: expected a list of {{key: value}} mappings (trials to run first)")
    return tuple(dict(e) for e in points)


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
            raise ConfigError(f"{where}: '{k}' is not a searched key; the space has {', '.join(dists)}." + suggest(k, dists))
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
    seed = S.integer(f"{p.spec.path}: sampler.seed", s.pop("seed", 0), 0) + n_existing
    if kind == "random":
        S.check_keys(f"{p.spec.path}: sampler", s, ())
        return optuna.samplers.RandomSampler(seed=seed)
    if kind != "tpe":
        raise ConfigError(f"{p.spec.path}: sampler.type: {kind!r} is not allowed; choose tpe or random")
    S.check_keys(f"{p.spec.path}: sampler", s, ("n_startup_trials", "multivariate", "constant_liar"))
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
    S.check_keys(f"{p.spec.path}: pruner", s, allowed[kind] + ("every_steps",))
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.get("n_startup_trials", 3),
                                           n_warmup_steps=s.get("n_warmup_steps", 0), n_min_trials=s.get("n_min_trials", 1))
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=s.get("min_resource", "auto"),
                                                      reduction_factor=s.get("reduction_factor", 3),
                                                      min_early_stopping_rate=s.get("min_early_stopping_rate", 0))
    return optuna.pruners.NopPruner()
