"""Shape checks shared by ablation and study spec files: each returns the checked value or raises a ConfigError that
names the spec location (`where`)."""
from __future__ import annotations

import math
from typing import Any, Mapping

from ism.errors import ConfigError, suggest

RESOURCE_KEYS = ("cpu", "gpu", "memory")


def check_keys(where: str, d: Mapping[str, Any], allowed) -> None:
    """Every key of d is allowed (with a did-you-mean otherwise)."""
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}: unknown key '{k}'; allowed: {', '.join(allowed)}." + suggest(str(k), allowed))


class SpecKindError(ConfigError):
    """A spec of the other kind: `command` runs it (a command adds its own flags to the hint)."""

    def __init__(self, what: str, command: str, flags: str = ""):
        super().__init__(f"{what}; run it with `{command}{flags}`")
        self.what, self.command = what, command

    def with_flags(self, flags: str) -> "SpecKindError":
        """The same error whose hint carries the flags of the command that printed it."""
        return SpecKindError(self.what, self.command, flags)


def check_kind(path, raw: Mapping[str, Any], kind: str) -> None:
    """A spec of the other kind (an ablation spec given to `ism study`, or the reverse) is named as such, rather
    than reported as an unknown key of this kind."""
    study = "space" in raw or "objective" in raw
    if kind == "study" and "variants" in raw and not study:
        raise SpecKindError(f"{path} is an ablation spec (it lists variants), not a study spec", f"ism ablate {path}")
    if kind == "ablation" and study and "variants" not in raw:
        raise SpecKindError(f"{path} is a study spec (it has a search space and an objective), not an ablation spec",
                            f"ism study {path}")


def mapping(where: str, v: Any) -> dict[str, Any]:
    """A mapping (None = empty)."""
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(v).__name__} {v!r}")
    return dict(v)


def int_list(where: str, v: Any, lo: int = 0) -> tuple[int, ...]:
    """A non-empty list of distinct integers >= lo (a single integer counts as a list of one)."""
    vals = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(vals, (list, tuple)) or not vals or any(isinstance(x, bool) or not isinstance(x, int) or x < lo
                                                              for x in vals):
        raise ConfigError(f"{where}: expected a non-empty list of integers >= {lo}, got {v!r}")
    if len(set(vals)) != len(vals):
        raise ConfigError(f"{where}: repeated values in {v!r}")
    return tuple(vals)


def integer(where: str, v: Any, lo: int = 1) -> int:
    """An integer >= lo."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}: expected an integer >= {lo}, got {v!r}")
    return v


def number(where: str, v: Any) -> float:
    """A finite number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}: expected a finite number, got {v!r}")
    return v


def resources(where: str, v: Any) -> dict[str, float]:
    """Per-trial resources {cpu, gpu, memory}: numbers >= 0, fractions allowed."""
    out = {}
    for k, x in mapping(where, v).items():
        if k not in RESOURCE_KEYS:
            raise ConfigError(f"{where}: unknown resource '{k}'; allowed: {', '.join(RESOURCE_KEYS)}." + suggest(k, RESOURCE_KEYS))
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0 or not math.isfinite(x):
            raise ConfigError(f"{where}.{k}: expected a number >= 0 (fractions allowed), got {x!r}")
        out[k] = float(x)
    return out


def check_trial_resources(where: str, r: Mapping[str, float]) -> None:
    """A trial needs some CPU or GPU."""
    if r.get("cpu", 0) <= 0 and r.get("gpu", 0) <= 0:
        raise ConfigError(f"{where}: resources: a trial needs cpu > 0 or gpu > 0, got {r}")


def overrides(where: str, v: Any) -> dict[str, Any]:
    """Overrides as a nested or dotted mapping; shape errors name the spec location."""
    d = mapping(where, v)
    for k in d:
        if not isinstance(k, str):
            raise ConfigError(f"{where}: keys must be config keys like guidance.mode, got {k!r}")
    return d


def base(path, raw: Mapping[str, Any], keys) -> tuple[dict[str, Any], dict[str, Any]]:
    """A spec's `base:` block, shape-checked the same way for ablation and study specs: (the block, its overrides);
    a named preset must exist. What else a base may hold (a delta file, an ablation variant) is each kind's own."""
    from ism.conf.config import preset_delta  # config loads the schema; specs stays import-light for --help
    block = mapping(f"{path}: base", raw.get("base"))
    check_keys(f"{path}: base", block, keys)
    if block.get("preset") is not None:
        preset_delta(block["preset"])
    return block, overrides(f"{path}: base.overrides", block.get("overrides"))
