"""Run configuration: presets, YAML deltas and dotted overrides merged onto the schema (ism.conf.schema), coerced and
validated into a frozen Config; the run identity hashed from it.

The schema's names are re-exported here: callers resolve and read configs through this module.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from ism.errors import ConfigError, suggest
from ism.conf.presets import DEFAULT_PRESET, PRESETS
from ism.conf.schema import (GUIDANCE_MODES, Config, DataConfig, EMAConfig, EvalConfig, GuidanceConfig,  # noqa: F401
                        LossConfig, MethodConfig, ModelConfig, OptimConfig, OTConfig, RunConfig, ShortcutConfig,
                        WaveletConfig, dwt_levels,
                        step_level, validate)
from ism.conf.schema import _NO_LEGACY


# ----------------------------------------------------------------------------------------------- dict <-> config
def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dict (tuples become lists) for YAML/JSON."""
    out = {}
    for sec in dataclasses.fields(cfg):
        sub = getattr(cfg, sec.name)
        out[sec.name] = {f.name: (list(v) if isinstance(v := getattr(sub, f.name), tuple) else v)
                         for f in dataclasses.fields(sub)}
    return out


def flatten(d: Mapping[str, Any] | Config, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    if isinstance(d, Config):
        d = to_dict(d)
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}}; also accepts nested values."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: '{p}' is a value, not a section")
        if isinstance(value, Mapping):
            node.setdefault(parts[-1], {})
            node[parts[-1]] = deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return out


def deep_merge(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; delta wins; dotted keys in delta are expanded."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for k, v in unflatten(delta).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _coerce(key: str, value: Any, f: dataclasses.Field, hint) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        elem = typing.get_args(hint)[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {elem.__name__}, got {type(value).__name__} {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, f, elem) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - schema bug


def _check_range(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    vals = value if isinstance(value, tuple) else (value,)
    for v in vals:
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise ConfigError(f"{key}: {v!r} is not allowed; choose one of {', '.join(map(str, meta['choices']))}."
                              + suggest(str(v), meta["choices"]))
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and (v < lo or (meta.get("lo_open") and v == lo)):
            raise ConfigError(f"{key}: {v!r} is out of range; allowed {'>' if meta.get('lo_open') else '>='} {lo}"
                              + (f" and {'<' if meta.get('hi_open') else '<='} {hi}" if hi is not None else ""))
        if hi is not None and (v > hi or (meta.get("hi_open") and v == hi)):
            raise ConfigError(f"{key}: {v!r} is out of range; allowed {'<' if meta.get('hi_open') else '<='} {hi}"
                              + (f" and {'>' if meta.get('lo_open') else '>='} {lo}" if lo is not None else ""))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A section's resolved field types: typing resolves them anew on every call, and a plan builds hundreds of
    configs (a third of `ism ablate --dry-run`'s time on the components spec)."""
    return typing.get_type_hints(cls)


def from_dict(d: Mapping[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict over the defaults."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"config must be a mapping of sections, got {type(d).__name__}")
    d = unflatten(d)
    sections = {f.name: f for f in dataclasses.fields(Config)}
    built = {}
    for name, value in d.items():
        if name not in sections:
            raise ConfigError(f"unknown config section '{name}'; allowed: {', '.join(sections)}." + suggest(name, sections))
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping of keys, got {type(value).__name__} {value!r}")
    for name, sec in sections.items():
        cls = sec.default_factory  # type: ignore[misc]
        hints = _hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.get(name, {}).items():
            full = f"{name}.{key}"
            if key not in fields:
                raise ConfigError(f"unknown config key '{full}'; allowed in '{name}': {', '.join(fields)}."
                                  + suggest(key, fields))
            v = _coerce(full, value, fields[key], hints[key])
            _check_range(full, v, fields[key].metadata)
            kwargs[key] = v
        built[name] = cls(**kwargs)
    cfg = Config(**built)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------- loading
def parse_override(item: str) -> tuple[str, Any]:
    """'guidance.mode=intrinsic' -> ('guidance.mode', 'intrinsic'); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. guidance.mode=intrinsic")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(f"override {item!r}: the key must be section.name, e.g. optim.lr=1e-3")
    value = parse_yaml(raw, f"override {item!r}") if raw.strip() else ""
    if isinstance(value, str) and raw.strip() not in ("",):
        # YAML reads '1e-3' as a string; accept it as a number.
        try:
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
        except ValueError:
            pass
    return key, value


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):  # unhashable keys: PyYAML's own error follows
                    continue
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} on line {line} (first on line {seen[key]})",
                        key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """The one YAML parser of everything ism reads: safe (plain data only), a key given twice is an error, and errors
    are ConfigErrors naming `source` (a file, or what the text is) with the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        msg = str(e).replace('"<unicode string>"', source).replace("<unicode string>", source)
        raise ConfigError(f"{source}: not valid YAML ({msg})") from None


def read_yaml(path: str | Path, what: str = "YAML file") -> tuple[Any, str]:
    """(data, text) of a YAML file through parse_yaml; a missing file or one that is not UTF-8 text is a ConfigError
    naming its path."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); save the file as UTF-8"
                          ) from None
    return parse_yaml(text, str(p)), text


def read_yaml_mapping(path: str | Path, what: str = "config file",
                      expected: str = "a mapping of config sections at the top level") -> tuple[dict[str, Any], str]:
    """(mapping, text) of a YAML file; a missing, malformed or non-mapping file is a ConfigError naming its path."""
    data, text = read_yaml(path, what)
    data = data or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected {expected}")
    return dict(data), text


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML delta file; a missing or malformed file names its path."""
    return read_yaml_mapping(path)[0]


def preset_delta(name: str) -> dict[str, Any]:
    """The delta dict of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}." + suggest(name, PRESETS))
    return PRESETS[name]


def resolve(preset: str = DEFAULT_PRESET, files: list[str | Path] = (), overrides: list[str] | Mapping[str, Any] = ()) -> Config:
    """Preset, then YAML delta files in order (a file may name its own 'preset:'), then key=value overrides."""
    merged: dict[str, Any] = {}
    file_deltas = []
    for f in files:
        delta = load_yaml(f)
        if "preset" in delta:
            preset = delta.pop("preset")
        file_deltas.append(delta)
    merged = deep_merge(merged, preset_delta(preset))
    for delta in file_deltas:
        merged = deep_merge(merged, delta)
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        merged = deep_merge(merged, {key: value})
    return from_dict(merged)


def replace(cfg: Config, **dotted: Any) -> Config:
    """A validated copy with dotted keys changed: replace(cfg, **{'run.steps': 10})."""
    return from_dict(deep_merge(to_dict(cfg), dotted))


# ----------------------------------------------------------------------------------------------- identity
def _keys_where(flag: str) -> frozenset[str]:
    """Dotted keys whose field metadata sets `flag` (identity or training)."""
    return frozenset(f"{sec.name}.{f.name}" for sec in dataclasses.fields(Config)
                     for f in dataclasses.fields(sec.default_factory) if f.metadata[flag])  # type: ignore[misc]


IDENTITY_KEYS = _keys_where("identity")    # what a run computes: hashed into run_id
TRAINING_KEYS = _keys_where("training")    # what training computes: hashed into training_id
ADDED_DEFAULTS = {k: v for k, v in flatten(Config()).items() if k in _keys_where("added")}  # hashed only when set
LEGACY_VALUES = {f"{sec.name}.{f.name}": f.metadata["legacy"] for sec in dataclasses.fields(Config)
                 for f in dataclasses.fields(sec.default_factory)  # type: ignore[misc]
                 if f.metadata["legacy"] is not _NO_LEGACY}  # hashed unless they hold what stored runs computed


def identity_dict(cfg: Config) -> dict[str, Any]:
    """The flattened keys that define what a run computes (a key added after the pin only when off its default)."""
    return {k: v for k, v in sorted(flatten(cfg).items())
            if k in IDENTITY_KEYS and not (k in ADDED_DEFAULTS and v == ADDED_DEFAULTS[k])
            and not (k in LEGACY_VALUES and v == LEGACY_VALUES[k])}


def _hash(keys: Mapping[str, Any]) -> str:
    """12 hex chars of the sha256 of the keys as canonical JSON."""
    return hashlib.sha256(json.dumps(keys, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def run_id(cfg: Config) -> str:
    """Run identity: short hash of the resolved config (seed included)."""
    return _hash(identity_dict(cfg))


def training_id(cfg: Config) -> str:
    """Identity of what training computes: the run identity without the keys training never reads (the evaluation
    settings, but eval.every_steps, which adds evaluations during training), so runs that differ only in how they
    are evaluated can share one training."""
    return _hash({k: v for k, v in identity_dict(cfg).items() if k in TRAINING_KEYS})


def diff(base: Config, other: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ: {key: (base, other)}."""
    a, b = flatten(base), flatten(other)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe() -> list[tuple[str, Any, str]]:
    """(key, default, help) for every config key: the table of docs/config-reference.md."""
    rows = []
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(sec.default_factory):  # type: ignore[misc]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{sec.name}.{f.name}", default, f.metadata.get("help", "")))
    return rows


def ema_decay(decay: float, half_life_steps: float) -> float:
    """Per-step decay from a half-life in steps when given, else the decay itself."""
    return 0.5 ** (1.0 / half_life_steps) if half_life_steps > 0 else decay


def reference_markdown() -> str:
    """The config reference table (docs/config-reference.md is generated from it)."""
    lines = ["# Config reference", "", "Generated by `python -m ism.conf.config`; every key can be set in a YAML delta file or as",
             "`section.key=value` on the command line. Presets: " + ", ".join(f"`{p}`" for p in PRESETS) + ".", "",
             "| key | default | meaning |", "|---|---|---|"]
    for key, default, help_ in describe():
        lines.append(f"| `{key}` | `{json.dumps(list(default) if isinstance(default, tuple) else default)}` | {help_} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")


def cfg_equivalent(mode: str, g: float) -> float:
    """A guidance value in CFG-scale units, one scale for every guidance mode: 1 + w for intrinsic guidance (its target
    under our reading is (1+w) v_c - w v_u, i.e. CFG at scale 1 + w; docs/method.md), the CFG scale itself for the
    cfg_* modes. The one place this conversion lives (evaluation, the report's figures and tables)."""
    return 1.0 + float(g) if mode == "intrinsic" else float(g)
