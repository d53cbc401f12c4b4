"""Study specs (studies/*.yaml): read the file and shape-check its base, search space, objective and profiles.

Keys and bounds are checked against ism.conf.config here; ism.study.plan checks the configs they give.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna

from ism.conf import metric_keys
from ism.system import store
from ism.conf import specs as S
from ism.conf.config import IDENTITY_KEYS, Config, ConfigError, read_yaml_mapping, step_level
from ism.errors import suggest
from ism.conf.profiles import PROFILES
from ism.ablation.trial_objective import Objective

SPEC_KEYS = ("name", "description", "base", "space", "objective", "n_trials", "parallelism", "sampler", "pruner",
             "resources", "max_failures", "seed", "enqueue", "profiles")
BASE_KEYS = ("preset", "ablation", "variant", "overrides")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
PARAM_TYPES = ("float", "log-float", "int", "log-int", "categorical")
PROFILE_KEYS = ("n_trials", "parallelism", "overrides", "space", "pruner", "sampler", "resources", "note", "enqueue")
METRICS = {"points": ("energy_distance", "sliced_wasserstein"), "image": ("fid", "kid", "spectrum_top_err"),
           "latent": ("fid", "kid")}


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


def _config_hint(key: str):
    """The type hint of a dotted config key, or a ConfigError naming the allowed keys."""
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]
    sec, _, name = key.partition(".")
    if sec not in sections or not name:
        raise ConfigError(f"space: unknown config key '{key}'; keys are section.name with sections "
                          f"{', '.join(sections)}." + suggest(sec, sections))
    fields = {f.name: f for f in dataclasses.fields(sections[sec])}
    if name not in fields:
        raise ConfigError(f"space: unknown config key '{key}'; allowed in '{sec}': {', '.join(fields)}." + suggest(name, fields))
    return typing.get_type_hints(sections[sec])[name]


def parse_param(key: str, raw: Any) -> Param:
    """Shape-check one search-space entry (bounds are checked against the config in plan())."""
    where = f"space.{key}"
    hint = _config_hint(key)
    if key not in IDENTITY_KEYS:
        raise ConfigError(f"{where}: {key} does not change what a run computes; search a key that does")
    raw = S.mapping(where, raw)
    S.check_keys(where, raw, PARAM_KEYS)
    kind = raw.get("type", "categorical" if "choices" in raw else None)
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}.type: {kind!r} is not allowed; choose one of {', '.join(PARAM_TYPES)}."
                          + suggest(str(kind), PARAM_TYPES))
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
    low, high = S.number(f"{where}.low", raw["low"]), S.number(f"{where}.high", raw["high"])
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
        step = S.number(f"{where}.step", step)
        if step <= 0 or step > high - low or log:
            raise ConfigError(f"{where}.step: {step!r} must be > 0 and <= high - low, and not combined with log")
    return Param(key, kind, float(low) if kind == "float" else int(low), float(high) if kind == "float" else int(high),
                 log, step)


def load_spec(path: str | Path) -> StudySpec:
    """Parse and shape-check a study spec file (configs are resolved and validated by plan())."""
    p = Path(path)
    raw, text = read_yaml_mapping(p, "study spec", f"a mapping with keys {', '.join(SPEC_KEYS)}")
    S.check_kind(p, raw, "study")
    S.check_keys(str(p), raw, SPEC_KEYS)
    base, base_over = S.base(p, raw, BASE_KEYS)
    if bool(base.get("ablation")) != bool(base.get("variant")):
        raise ConfigError(f"{p}: base: 'ablation' (a spec path) and 'variant' (one of its variants) go together")
    if base.get("ablation") and base.get("preset"):
        raise ConfigError(f"{p}: base: give either 'preset' or 'ablation' + 'variant' (the ablation spec names its preset)")
    space_raw = S.mapping(f"{p}: space", raw.get("space"))
    if not space_raw:
        raise ConfigError(f"{p}: space: at least one searched key is required (e.g. optim.lr: {{type: log-float, low: 1e-4, high: 1e-2}})")
    try:
        space = tuple(parse_param(str(k), v) for k, v in flatten_space(space_raw).items())
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    profiles = S.mapping(f"{p}: profiles", raw.get("profiles"))
    for name, adj in profiles.items():
        if name not in PROFILES:
            raise ConfigError(f"{p}: profiles: unknown profile '{name}'; choose one of {', '.join(PROFILES)}."
                              + suggest(str(name), PROFILES))
        S.check_keys(f"{p}: profiles.{name}", S.mapping(f"{p}: profiles.{name}", adj), PROFILE_KEYS)
    enqueue = raw.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(e, Mapping) for e in enqueue):
        raise ConfigError(f"{p}: enqueue: expected a list of {{key: value}} mappings (trials to run first)")
    return StudySpec(
        name=store.check_name(f"{p}: name", raw.get("name") or p.stem), path=str(p),
        description=str(raw.get("description", "")).strip(),
        preset=base.get("preset"), ablation=base.get("ablation"), variant=base.get("variant"),
        overrides=base_over, space=space,
        objective_raw=S.mapping(f"{p}: objective", raw.get("objective")),
        n_trials=S.integer(f"{p}: n_trials", raw.get("n_trials", 20)),
        parallelism=S.integer(f"{p}: parallelism", raw.get("parallelism", 1)),
        sampler=S.mapping(f"{p}: sampler", raw.get("sampler")), pruner=S.mapping(f"{p}: pruner", raw.get("pruner")),
        resources=S.resources(f"{p}: resources", raw.get("resources")),
        max_failures=S.integer(f"{p}: max_failures", raw.get("max_failures", 1), 0), seed=S.integer(f"{p}: seed", raw.get("seed", 0), 0),
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
    S.check_keys(f"{where}: objective", raw, ("metric", "steps", "direction"))
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{where}: objective.metric: required, e.g. fid (with steps) or fid_steps_1")
    kind = "points" if cfg.data.name == "toy2d" else "latent" if cfg.data.name == "latents" else "image"
    named = metric_keys.parse(metric)
    steps_raw = raw.get("steps")
    if named is not None and named.w is None:
        if steps_raw is not None:
            raise ConfigError(f"{where}: objective: '{metric}' already names its step count; drop 'steps' or use "
                              f"metric: {named.metric}")
        metric, steps_raw = named.metric, {named.steps: 1.0}
    if metric not in METRICS[kind]:
        raise ConfigError(f"{where}: objective.metric: '{metric}' is not computed for {cfg.data.name} data; choose one of "
                          f"{', '.join(METRICS[kind])} (optionally as <metric>_steps_N)." + suggest(metric, METRICS[kind]))
    if steps_raw is None:
        raise ConfigError(f"{where}: objective.steps: required with metric '{metric}' (a list, or {{steps: weight}})")
    if isinstance(steps_raw, list):
        steps_raw = {s: 1.0 / len(steps_raw) for s in steps_raw}
    weights = {}
    for s, w in S.mapping(f"{where}: objective.steps", steps_raw).items():
        s = int(s) if isinstance(s, (int, str)) and str(s).isdigit() else s
        step_level(s, cfg.shortcut.max_steps_log2, f"{where}: objective.steps")
        weights[metric_keys.key(metric, s)] = float(S.number(f"{where}: objective.steps.{s}", w))
    if not weights:
        raise ConfigError(f"{where}: objective.steps: at least one step count is required")
    direction = raw.get("direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"{where}: objective.direction: {direction!r} is not allowed; choose minimize or maximize")
    return Objective(weights, metric, tuple(sorted(metric_keys.parse(k).steps for k in weights)), direction)
