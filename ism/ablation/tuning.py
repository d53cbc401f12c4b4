"""Equal-budget tuning in ablation specs: the `tune:` block, and the record of tuned values with their provenance.

A comparison is fair by construction only when every arm gets the same tuning budget for its own knobs, the baseline
included (docs/method.md#fair-comparisons). The block names, per arm (a variant of the spec), the knobs it tunes as
a grid of exactly `budget` points, and the variants that carry the arm's tuned values; one held-out training seed
(never a seed the sweep reports) and one objective for all arms. ism.study.tune runs each arm as a study and writes
the record this module reads; ism.ablation.plan.plan applies it. The record is the one home of the tuned values: a YAML
file per spec and profile, each arm with its provenance (spec, budget, trials, objective, seed, the fingerprint of
its study: base config identity, space and objective), so a changed default re-tunes instead of reusing a stale value.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from ism.conf import specs as S
from ism.conf.config import read_yaml
from ism.errors import ConfigError, suggest
from ism.system.store import atomic_write, check_name

TUNE_KEYS = ("budget", "seed", "objective", "arms", "profiles", "note", "record")
ARM_KEYS = ("space", "points", "applies_to", "reason", "own")
PROFILE_TUNE_KEYS = ("budget", "seed", "arms", "note")


@dataclass(frozen=True)
class Arm:
    """One arm's tuning: its variant, its grid of knob values (budget points), and the variants carrying the result."""
    variant: str
    points: tuple[Mapping[str, Any], ...]
    applies_to: tuple[str, ...]
    reason: str
    own: bool = False   # with tune.record: tuned by this spec into its own record, not read from the lender's

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for p in self.points for k in p))


@dataclass(frozen=True)
class Tune:
    """The tune block resolved for one profile."""
    budget: int
    seed: int
    objective: Mapping[str, Any]
    arms: tuple[Arm, ...]
    note: str
    record: str | None = None   # another spec's record whose identical arms this spec reuses (never re-tunes there)

    def parts(self) -> list[Tune]:
        """One Tune per record: the arms read from the lender's record (tune.record), then the arms this spec tunes
        into its own (`own: true`, or every arm without tune.record)."""
        if not self.record:
            return [self]
        lent = tuple(a for a in self.arms if not a.own)
        own = tuple(a for a in self.arms if a.own)
        return [t for t in (dataclasses.replace(self, arms=lent) if lent else None,
                            dataclasses.replace(self, arms=own, record=None) if own else None) if t is not None]

    def carriers(self) -> dict[str, str]:
        """{variant: the arm whose tuned values it carries}."""
        out = {}
        for a in self.arms:
            for v in (a.variant, *a.applies_to):
                out[v] = a.variant
        return out


def _grid(where: str, raw: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """An arm's points: `points` (a list of {key: value}) or `space` ({key: [values]}, crossed)."""
    if ("points" in raw) == ("space" in raw):
        raise ConfigError(f"{where}: give either 'space' ({{key: [values]}}, crossed into a grid) or 'points' "
                          "(a list of {key: value})")
    if "points" in raw:
        pts = raw["points"]
        if not isinstance(pts, list) or not pts or not all(isinstance(p, Mapping) and p for p in pts):
            raise ConfigError(f"{where}.points: expected a non-empty list of {{key: value}} mappings")
        return tuple(dict(p) for p in pts)
    space = S.mapping(f"{where}.space", raw["space"])
    if not space:
        raise ConfigError(f"{where}.space: at least one tuned key is required")
    for k, vals in space.items():
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}.space.{k}: expected a non-empty list of values")
        if len({json.dumps(v) for v in vals}) != len(vals):
            raise ConfigError(f"{where}.space.{k}: repeated values in {vals!r}")
    keys = list(space)
    return tuple(dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys)))


def parse(where: str, raw: Any, variants: list[str], profile: str) -> Tune | None:
    """The tune block for one profile (None without one); every arm's grid must hold exactly `budget` points."""
    if raw is None:
        return None
    raw = S.mapping(where, raw)
    S.check_keys(where, raw, TUNE_KEYS)
    adj = S.mapping(f"{where}.profiles", raw.get("profiles")).get(profile) or {}
    adj = S.mapping(f"{where}.profiles.{profile}", adj)
    S.check_keys(f"{where}.profiles.{profile}", adj, PROFILE_TUNE_KEYS)
    budget = S.integer(f"{where}.budget", adj.get("budget", raw.get("budget")))
    seed = S.integer(f"{where}.seed", adj.get("seed", raw.get("seed", 100)), 0)
    objective = S.mapping(f"{where}.objective", raw.get("objective"))
    if not objective:
        raise ConfigError(f"{where}.objective: required, e.g. {{metric: fid, steps: {{1: 0.5, 4: 0.25, 128: 0.25}}}}")
    arms_raw = S.mapping(f"{where}.arms", adj.get("arms", raw.get("arms")))
    if not arms_raw:
        raise ConfigError(f"{where}.arms: at least one arm (a variant and the knobs it tunes) is required")
    arms, carried = [], {}
    for name, a in arms_raw.items():
        w = f"{where}.arms.{name}"
        if name not in variants:
            raise ConfigError(f"{w}: '{name}' is not a variant of the spec; it has {', '.join(variants)}."
                              + suggest(str(name), variants))
        a = S.mapping(w, a)
        S.check_keys(w, a, ARM_KEYS)
        points = _grid(w, a)
        if len(points) != budget:
            raise ConfigError(f"{w}: {len(points)} grid point(s), but every arm gets exactly budget={budget} trials "
                              "(equal tuning budget); change the grid or the budget")
        applies = tuple(a.get("applies_to") or ())
        for v in (name, *applies):
            if v not in variants:
                raise ConfigError(f"{w}.applies_to: unknown variant '{v}'." + suggest(str(v), variants))
            if v in carried:
                raise ConfigError(f"{w}: variant '{v}' already carries the values of arm '{carried[v]}'; a variant "
                                  "carries one arm's values")
            carried[v] = name
        own = a.get("own", False)
        if not isinstance(own, bool):
            raise ConfigError(f"{w}.own: expected true or false, got {own!r}")
        arms.append(Arm(str(name), points, applies, str(a.get("reason", "")).strip(), own))
    record = raw.get("record")
    if record is not None:
        record = check_name(f"{where}.record", record)
    elif any(a.own for a in arms):
        raise ConfigError(f"{where}.arms: 'own: true' only means something beside tune.record (the arms read from "
                          "another spec's record); without it every arm is this spec's own: drop the key")
    return Tune(budget, seed, objective, tuple(arms), str(adj.get("note", raw.get("note", ""))).strip(), record)


# ----------------------------------------------------------------------------------------------- the record
def record_path(spec_path: str | Path, spec_name: str, profile: str, storage: Path, default_profile: str) -> Path:
    """Where the record lives: beside the spec (committed, `tuned/<spec>.<profile>.yaml`) for the default profile,
    under the storage root for any other, so a smoke run never touches tracked files."""
    if profile == default_profile:
        return Path(spec_path).parent / "tuned" / f"{spec_name}.{profile}.yaml"
    return Path(storage) / "tuned" / f"{spec_name}.{profile}.yaml"


def read_record(path: Path) -> dict[str, Any]:
    """The record's arms ({} when there is none yet)."""
    if not path.is_file():
        return {}
    data = read_yaml(path, "tuning record")[0] or {}
    if not isinstance(data, Mapping) or not isinstance(data.get("arms", {}), Mapping):
        raise ConfigError(f"{path}: not a tuning record (expected a mapping with 'arms'); delete it to re-tune")
    return dict(data.get("arms") or {})


def write_record(path: Path, spec_name: str, profile: str, arms: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the record (all arms) atomically."""
    head = (f"# Tuned values of ablation spec '{spec_name}' on profile {profile}, written by `ism ablate` (equal-budget\n"
            "# tuning, ism/ablation/tuning.py). Each arm: the chosen values, and the provenance that decides whether they are\n"
            "# still valid (a changed config, grid, budget, objective or seed re-tunes that arm).\n")
    body = {"spec": spec_name, "profile": profile, "arms": {k: dict(v) for k, v in arms.items()}}
    atomic_write(path, head + yaml.safe_dump(body, sort_keys=False))


def is_current(entry: Mapping[str, Any] | None, fingerprint: str, budget: int) -> bool:
    """A recorded arm is reused only when its provenance matches today's arm exactly."""
    if not entry:
        return False
    prov = entry.get("provenance") or {}
    return prov.get("fingerprint") == fingerprint and prov.get("budget") == budget and \
        prov.get("trials") == budget and isinstance(entry.get("values"), Mapping)


def tuned_overrides(tune: Tune, record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{variant: tuned values} for every variant that carries an arm's recorded values."""
    out = {}
    for v, arm in tune.carriers().items():
        entry = record.get(arm)
        if entry and isinstance(entry.get("values"), Mapping):
            out[v] = dict(entry["values"])
    return out
