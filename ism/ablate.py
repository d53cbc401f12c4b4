"""`ism ablate`: ablation specs (ablations/*.yaml) and profiles, resolved into a validated trial plan before anything runs.

A spec is a base (a preset plus overrides) and named variants (each a delta with a one-line reason), crossed with
seeds. A profile (smoke, embedded, gpu-*) picks the preset, the per-trial resources and the run-scale settings;
a spec may adjust seeds, eval steps and overrides per profile. Every trial's Config is resolved here, so a bad spec
fails with a ConfigError before Ray starts. Variants whose resolved configs are identical share one trial.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ism.config import (Config, ConfigError, _suggest, deep_merge, diff, from_dict, load_yaml, preset_delta,
                        read_yaml_mapping, run_id, training_id)


@dataclass(frozen=True)
class Profile:
    """How a spec runs at one scale: preset, per-trial resources, forced run settings, and cost-model rates."""
    preset: str
    resources: Mapping[str, float]
    overrides: Mapping[str, Any]
    about: str
    cpus: int = 0                   # CPUs of the local Ray started for this profile, 0 = all of the machine
    train_step_s: float = 0.0       # seconds per training step per trial (cost estimate; measured here for CPU)
    sample_nfe_s: float = 0.0       # seconds per network evaluation per generated sample at eval
    overhead_s: float = 0.0         # per-trial start-up (worker, imports, data, MLflow) and FID feature cost


# Rates for the CPU profiles were measured on this project's 2-core machine (1 torch thread per trial; mnist-cpu:
# 74 ms per step at batch 32 (docs/embedded-model.md); benchmarks/bench_tune.py measured a whole SM trial at
# ~220 s: ~100 s of training, ~105 s of evaluation (500 samples at 1 ... 128 steps, diagnostics), ~15 s start-up);
# GPU rates are order-of-magnitude guesses for one A100-class GPU per trial.
PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", {"cpu": 1}, {"run.device": "cpu", "run.progress": False},
                     "seconds per trial, for tests", cpus=2, train_step_s=0.01, sample_nfe_s=2e-5, overhead_s=8.0),
    "embedded": Profile("mnist-cpu", {"cpu": 1}, {"run.device": "cpu", "run.progress": False},
                        "MNIST-5k on 2 CPU cores, 1 CPU and 1 torch thread per trial (two trials at once)",
                        cpus=2, train_step_s=0.074, sample_nfe_s=8e-4, overhead_s=15.0),
    "gpu-fashion": Profile("fashion-gpu", {"gpu": 1, "cpu": 8}, {"run.device": "cuda", "run.progress": False},
                           "Fashion-MNIST 32x32, DiT-S/2, 1 GPU per trial", train_step_s=0.05, sample_nfe_s=2e-5,
                           overhead_s=120.0),
    "gpu-cifar10": Profile("cifar10-gpu", {"gpu": 1, "cpu": 8}, {"run.device": "cuda", "run.progress": False},
                           "CIFAR-10 32x32, DiT-B/2, 1 GPU per trial", train_step_s=0.12, sample_nfe_s=5e-5,
                           overhead_s=300.0),
    "gpu-imagenet": Profile("imagenet-latents-gpu", {"gpu": 1, "cpu": 8}, {"run.device": "cuda", "run.progress": False},
                            "ImageNet-256 VAE latents, DiT-XL/2, 1 GPU per trial", train_step_s=0.6,
                            sample_nfe_s=4e-4, overhead_s=1800.0),
}
DEFAULT_PROFILE = "embedded"
SPEC_KEYS = ("name", "description", "base", "variants", "seeds", "eval_steps", "resources", "max_failures",
             "profiles", "groups")
VARIANT_KEYS = ("reason", "overrides")
BASE_KEYS = ("preset", "config", "overrides")
PROFILE_KEYS = ("seeds", "eval_steps", "overrides", "variant_overrides", "variants", "resources", "max_failures", "note")
RESOURCE_KEYS = ("cpu", "gpu", "memory")


@dataclass(frozen=True)
class Variant:
    name: str
    reason: str
    overrides: Mapping[str, Any]


@dataclass(frozen=True)
class Spec:
    """A parsed ablation spec file."""
    name: str
    path: str
    description: str
    base_preset: str | None
    base_overrides: Mapping[str, Any]
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    eval_steps: tuple[int, ...] | None
    resources: Mapping[str, float]
    max_failures: int
    profiles: Mapping[str, Mapping[str, Any]]
    groups: Mapping[str, tuple[str, ...]]
    text: str


@dataclass(frozen=True)
class Trial:
    """One unit of work: a resolved config (identity = run id), listed under every variant that resolves to it."""
    run_id: str
    variants: tuple[str, ...]
    seed: int
    cfg: Config
    diff: Mapping[str, tuple[Any, Any]]   # dotted key -> (base value, this value), seed excluded

    @property
    def label(self) -> str:
        return f"{self.variants[0]}/s{self.seed}"


@dataclass(frozen=True)
class Plan:
    """Everything a sweep needs, resolved and validated."""
    spec: Spec
    profile: str
    preset: str
    base: Config
    trials: tuple[Trial, ...]
    resources: Mapping[str, float]
    max_failures: int
    seeds: tuple[int, ...]
    variants: tuple[str, ...]
    notes: tuple[str, ...]             # profile adjustments, recorded on the sweep's parent run
    sweep_id: str = field(default="")

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data (logged as plan.json on the parent run)."""
        return {"spec": self.spec.name, "profile": self.profile, "preset": self.preset, "sweep_id": self.sweep_id,
                "seeds": list(self.seeds), "variants": list(self.variants), "resources": dict(self.resources),
                "max_failures": self.max_failures, "notes": list(self.notes),
                "groups": {k: list(v) for k, v in self.spec.groups.items()},
                "reasons": {v.name: v.reason for v in self.spec.variants if v.name in self.variants},
                "trials": [{"run_id": t.run_id, "variants": list(t.variants), "seed": t.seed,
                            "diff": {k: list(v) for k, v in t.diff.items()}} for t in self.trials]}


# ----------------------------------------------------------------------------------------------- spec parsing
def _check_keys(where: str, d: Mapping[str, Any], allowed) -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}: unknown key '{k}'; allowed: {', '.join(allowed)}." + _suggest(str(k), allowed))


def _mapping(where: str, v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(v).__name__} {v!r}")
    return dict(v)


def _int_list(where: str, v: Any, lo: int = 0) -> tuple[int, ...]:
    vals = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(vals, (list, tuple)) or not vals or any(isinstance(x, bool) or not isinstance(x, int) or x < lo
                                                              for x in vals):
        raise ConfigError(f"{where}: expected a non-empty list of integers >= {lo}, got {v!r}")
    if len(set(vals)) != len(vals):
        raise ConfigError(f"{where}: repeated values in {v!r}")
    return tuple(vals)


def _resources(where: str, v: Any) -> dict[str, float]:
    out = {}
    for k, x in _mapping(where, v).items():
        if k not in RESOURCE_KEYS:
            raise ConfigError(f"{where}: unknown resource '{k}'; allowed: {', '.join(RESOURCE_KEYS)}." + _suggest(k, RESOURCE_KEYS))
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0 or not math.isfinite(x):
            raise ConfigError(f"{where}.{k}: expected a number >= 0 (fractions allowed), got {x!r}")
        out[k] = float(x)
    return out


def _overrides(where: str, v: Any) -> dict[str, Any]:
    """Overrides as a nested or dotted mapping; shape errors name the spec location."""
    d = _mapping(where, v)
    for k in d:
        if not isinstance(k, str):
            raise ConfigError(f"{where}: keys must be config keys like guidance.mode, got {k!r}")
    return d


def load_spec(path: str | Path) -> Spec:
    """Parse and shape-check a spec file (configs are resolved and validated by plan())."""
    p = Path(path)
    raw, text = read_yaml_mapping(p, "ablation spec", f"a mapping with keys {', '.join(SPEC_KEYS)}")
    _check_keys(str(p), raw, SPEC_KEYS)
    name = str(raw.get("name") or p.stem)
    base = _mapping(f"{p}: base", raw.get("base"))
    _check_keys(f"{p}: base", base, BASE_KEYS)
    preset = base.get("preset")
    base_over = _overrides(f"{p}: base.overrides", base.get("overrides"))
    if base.get("config"):  # a delta file, e.g. written by `ism study --export-best`; the spec's overrides win
        delta = load_yaml(p.parent / str(base["config"]))
        file_preset = delta.pop("preset", None)
        preset = preset or file_preset
        base_over = deep_merge(delta, base_over)
    if preset is not None:
        preset_delta(preset)
    variants_raw = _mapping(f"{p}: variants", raw.get("variants"))
    if not variants_raw:
        raise ConfigError(f"{p}: variants: at least one variant is required (name: {{reason: ..., overrides: {{...}}}})")
    variants = []
    for vname, v in variants_raw.items():
        where = f"{p}: variants.{vname}"
        v = _mapping(where, v)
        _check_keys(where, v, VARIANT_KEYS)
        if not str(v.get("reason", "")).strip():
            raise ConfigError(f"{where}: a one-line 'reason' is required")
        variants.append(Variant(str(vname), str(v["reason"]).strip(), _overrides(f"{where}.overrides", v.get("overrides"))))
    names = [v.name for v in variants]
    profiles = _mapping(f"{p}: profiles", raw.get("profiles"))
    for pname, adj in profiles.items():
        if pname not in PROFILES:
            raise ConfigError(f"{p}: profiles: unknown profile '{pname}'; choose one of {', '.join(PROFILES)}."
                              + _suggest(str(pname), PROFILES))
        adj = _mapping(f"{p}: profiles.{pname}", adj)
        _check_keys(f"{p}: profiles.{pname}", adj, PROFILE_KEYS)
        vo = _mapping(f"{p}: profiles.{pname}.variant_overrides", adj.get("variant_overrides"))
        for vn in [*(adj.get("variants") or ()), *vo]:
            if vn not in names:
                raise ConfigError(f"{p}: profiles.{pname}: unknown variant '{vn}'; the spec has {', '.join(names)}."
                                  + _suggest(str(vn), names))
        adj["variant_overrides"] = {vn: _overrides(f"{p}: profiles.{pname}.variant_overrides.{vn}", d) for vn, d in vo.items()}
        profiles[pname] = adj
    groups = {}
    for gname, members in _mapping(f"{p}: groups", raw.get("groups")).items():
        if not isinstance(members, (list, tuple)) or not members:
            raise ConfigError(f"{p}: groups.{gname}: expected a non-empty list of variant names")
        for vn in members:
            if vn not in names:
                raise ConfigError(f"{p}: groups.{gname}: unknown variant '{vn}'; the spec has {', '.join(names)}."
                                  + _suggest(str(vn), names))
        groups[str(gname)] = tuple(members)
    mf = raw.get("max_failures", 2)
    if isinstance(mf, bool) or not isinstance(mf, int) or mf < 0:
        raise ConfigError(f"{p}: max_failures: expected an integer >= 0, got {mf!r}")
    return Spec(name=name, path=str(p), description=str(raw.get("description", "")).strip(), base_preset=preset,
                base_overrides=base_over, variants=tuple(variants),
                seeds=_int_list(f"{p}: seeds", raw.get("seeds", [0])),
                eval_steps=_int_list(f"{p}: eval_steps", raw["eval_steps"], 1) if raw.get("eval_steps") is not None else None,
                resources=_resources(f"{p}: resources", raw.get("resources")), max_failures=mf, profiles=profiles,
                groups=groups, text=text)


# ----------------------------------------------------------------------------------------------- planning
def _resolve(where: str, layers: list[Mapping[str, Any]]) -> Config:
    merged: dict[str, Any] = {}
    try:
        for layer in layers:
            merged = deep_merge(merged, layer)
        return from_dict(merged)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def components(cfg: Config) -> dict[str, bool]:
    """Which iSM components a config switches on (MLflow tags, report grouping)."""
    intrinsic = cfg.guidance.mode == "intrinsic"
    return {"intrinsic": intrinsic, "interval": intrinsic and cfg.guidance.t_interval > 0,
            "wavelet": cfg.wavelet.enabled, "sot": cfg.ot.enabled, "twin_ema": cfg.ema.twin}


def plan(spec: Spec, profile: str = DEFAULT_PROFILE, variants: list[str] | None = None,
         seeds: list[int] | None = None) -> Plan:
    """Resolve every trial's Config (raising ConfigError on the first bad one) and merge identical configs."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}'; choose one of {', '.join(PROFILES)}." + _suggest(profile, PROFILES))
    prof = PROFILES[profile]
    adj = spec.profiles.get(profile, {})
    where = f"{spec.path} (profile {profile})"
    preset = spec.base_preset or prof.preset
    resources = {**_resources("profile", prof.resources), **spec.resources,
                 **_resources(f"{where}: resources", adj.get("resources"))}
    if resources.get("cpu", 0) <= 0 and resources.get("gpu", 0) <= 0:
        raise ConfigError(f"{where}: resources: a trial needs cpu > 0 or gpu > 0, got {resources}")
    threads = max(1, int(resources.get("cpu", 1)))   # torch threads = the trial's CPU share
    names = [v.name for v in spec.variants]
    chosen = list(adj.get("variants") or names)
    if variants:
        for vn in variants:
            if vn not in names:
                raise ConfigError(f"--variants: unknown variant '{vn}'; {spec.name} has {', '.join(names)}." + _suggest(vn, names))
        chosen = [vn for vn in names if vn in variants]
    seed_list = list(_int_list(f"{where}: seeds", adj["seeds"]) if "seeds" in adj else spec.seeds)
    if seeds is not None:
        seed_list = list(_int_list("--seeds", list(seeds)))
    eval_steps = _int_list(f"{where}: eval_steps", adj["eval_steps"], 1) if "eval_steps" in adj else spec.eval_steps
    head = [preset_delta(preset), spec.base_overrides, {"eval.steps": list(eval_steps)} if eval_steps else {},
            dict(prof.overrides), {"run.threads": threads}, _overrides(f"{where}: overrides", adj.get("overrides"))]
    base = _resolve(f"{where}: base", head + [{"run.seed": seed_list[0]}])
    by_id: dict[str, Trial] = {}
    order: list[str] = []
    for vn in chosen:
        v = next(x for x in spec.variants if x.name == vn)
        for seed in seed_list:
            cfg = _resolve(f"{where}: variant '{vn}' seed {seed}",
                           head + [v.overrides, adj.get("variant_overrides", {}).get(vn, {}), {"run.seed": seed}])
            rid = run_id(cfg)
            if rid in by_id:
                t = by_id[rid]
                by_id[rid] = Trial(rid, t.variants + (vn,), seed, t.cfg, t.diff)
                continue
            seed_base = _resolve(f"{where}: base", head + [{"run.seed": seed}])
            by_id[rid] = Trial(rid, (vn,), seed, cfg, diff(seed_base, cfg))
            order.append(rid)
    notes = [f"profile {profile}: {prof.about}; preset {preset}"]
    if "seeds" in adj:
        notes.append(f"seeds {list(seed_list)} on this profile (spec default {list(spec.seeds)})")
    if "eval_steps" in adj:
        notes.append(f"eval steps {list(eval_steps)} on this profile (spec default {list(spec.eval_steps or [])})")
    if adj.get("variants"):
        notes.append(f"variants limited to {chosen} on this profile")
    if adj.get("overrides"):
        notes.append(f"profile overrides {dict(adj['overrides'])}")
    for vn, d in (adj.get("variant_overrides") or {}).items():
        notes.append(f"variant {vn} on this profile: {dict(d)}")
    if adj.get("note"):
        notes.append(str(adj["note"]))
    trials = tuple(by_id[r] for r in order)
    mf = adj.get("max_failures", spec.max_failures)
    sweep_id = hashlib.sha256(json.dumps([spec.name, profile, sorted(order)]).encode()).hexdigest()[:12]
    return Plan(spec, profile, preset, base, trials, resources, mf, tuple(seed_list), tuple(chosen), tuple(notes), sweep_id)


# ----------------------------------------------------------------------------------------------- storage layout
# <storage>/trials/<run id>/          a trial's run dir (train() resumes from it), shared by every sweep and spec
# <storage>/sweeps/<spec>/<profile>-<sweep id>/   plan.json, the parent MLflow run id, Ray's experiment dirs
def storage_root(path: str | Path | None = None) -> Path:
    """Absolute storage root (Ray needs absolute paths): --storage, $ISM_STORAGE, or runs/ablate."""
    return Path(path or os.environ.get("ISM_STORAGE") or "runs/ablate").resolve()


def trial_dir(storage: Path, rid: str) -> Path:
    """Run directory of one trial, keyed by its run id."""
    return Path(storage) / "trials" / rid


def sweep_dir(storage: Path, p: Plan) -> Path:
    """Directory of one sweep (spec x profile x trial set)."""
    return Path(storage) / "sweeps" / p.spec.name / f"{p.profile}-{p.sweep_id}"


def finished_trials(p: Plan, storage: Path) -> set[str]:
    """Run ids whose training and evaluation finished (summary.json is written last)."""
    return {t.run_id for t in p.trials if (trial_dir(storage, t.run_id) / "summary.json").exists()}


def trained_donors(storage: Path) -> dict[str, Path]:
    """{training id: run dir} of stored trials whose training finished (the final checkpoint is on disk).

    A trial whose config differs from one of them only in evaluation settings (the guidance spec's sweeps over
    components' trials) adopts that training and only evaluates. Unreadable or outdated run dirs are skipped.
    """
    found: dict[str, Path] = {}
    root = Path(storage) / "trials"
    for d in sorted(root.iterdir()) if root.is_dir() else ():
        try:
            cfg = from_dict(load_yaml(d / "config.yaml"))
        except (OSError, ConfigError):
            continue
        if (d / "checkpoints" / f"ckpt-{cfg.run.steps:08d}.pt").is_file():
            found.setdefault(training_id(cfg), d)
    return found


def unstarted(run_dir: Path) -> bool:
    """No checkpoint and no summary yet: a run dir that may still adopt a finished training."""
    d = Path(run_dir)
    return not (d / "summary.json").exists() and not any((d / "checkpoints").glob("ckpt-*.pt"))


def trained_donor(cfg: Config, storage: Path, donors: Mapping[str, Path] | None = None) -> Path | None:
    """Run dir of another stored trial with the same training as cfg, finished; None when there is none."""
    d = (trained_donors(storage) if donors is None else donors).get(training_id(cfg))
    return d if d is not None and d.name != run_id(cfg) else None


def reused_training(p: Plan, storage: Path) -> dict[str, str]:
    """{run id: donor run id} for the plan's unstarted trials that will adopt a finished training."""
    donors = trained_donors(storage)
    out = {}
    for t in p.trials:
        if unstarted(trial_dir(storage, t.run_id)):
            donor = trained_donor(t.cfg, storage, donors)
            if donor is not None:
                out[t.run_id] = donor.name
    return out


# ----------------------------------------------------------------------------------------------- cost and listing
def estimate_parts(cfg: Config, profile: str) -> tuple[float, float, float]:
    """Rough wall seconds of one trial: (training steps, sampling at every evaluated step count, fixed overhead)."""
    p = PROFILES[profile]
    e = cfg.eval
    nfe = sum(e.steps) + (len(e.guidance_sweep) * sum(e.sweep_steps) if e.guidance_sweep else 0)
    # step-cost shares of the components measured on the embedded preset (full iSM ~1.15x the SM step)
    extra = 1.0 + 0.08 * (cfg.guidance.mode == "intrinsic") + 0.04 * cfg.ot.enabled + 0.03 * cfg.wavelet.enabled
    evals = (1 if e.at_end else 0) + (cfg.run.steps // e.every_steps if e.every_steps else 0)
    return cfg.run.steps * p.train_step_s * extra, evals * e.num_samples * nfe * p.sample_nfe_s, p.overhead_s


def estimate_s(cfg: Config, profile: str) -> float:
    """Rough wall seconds of one trial."""
    return sum(estimate_parts(cfg, profile))


def concurrency(profile: str, resources: Mapping[str, float], cap: int | None = None) -> int:
    """Trials at once: on CPU profiles the local Ray's CPUs over the per-trial share (at most `cap`, a study's
    parallelism); on GPU profiles `cap`, else 1 (costs are then given per GPU)."""
    if resources.get("gpu"):
        return cap or 1
    cpus = PROFILES[profile].cpus or os.cpu_count() or 1
    k = max(1, int(cpus // (resources.get("cpu", 1) or 1)))  # Ray packs fractional CPU shares
    return min(k, cap) if cap else k


def fmt_resources(r: Mapping[str, float]) -> str:
    """{'cpu': 1.0, 'gpu': 0.5} -> 'cpu 1, gpu 0.5'."""
    return ", ".join(f"{k} {v:g}" for k, v in r.items() if v)


def _fmt_s(s: float) -> str:
    return f"{s:.0f}s" if s < 90 else f"{s / 60:.1f}m" if s < 5400 else f"{s / 3600:.1f}h"


def _fmt_v(v: Any) -> str:
    return json.dumps(list(v)) if isinstance(v, (list, tuple)) else str(v)


def describe_plan(p: Plan, done: set[str] = frozenset(), reused: Mapping[str, str] | None = None) -> str:
    """The --dry-run listing: trials grouped by config, their diff to the base, resources and estimated cost."""
    n_cfg = len({t.variants for t in p.trials})
    lines = [f"spec {p.spec.name} ({p.spec.path}) - profile {p.profile} (preset {p.preset}) - sweep {p.sweep_id}",
             f"{len(p.variants)} variants -> {n_cfg} distinct configs x {len(p.seeds)} seeds {list(p.seeds)} = "
             f"{len(p.trials)} trials; resources per trial {fmt_resources(p.resources)}; max_failures {p.max_failures}"]
    lines += [f"  note: {n}" for n in p.notes]
    total = 0.0
    seen: set[tuple[str, ...]] = set()
    reused = reused or {}
    parts = {t.run_id: estimate_parts(t.cfg, p.profile) for t in p.trials}
    cost = {rid: sum(pt[1:]) if rid in reused else sum(pt) for rid, pt in parts.items()}  # adopted: no training
    for t in p.trials:
        est = cost[t.run_id]
        total += est
        if t.variants not in seen:
            seen.add(t.variants)
            reasons = [v.reason for v in p.spec.variants if v.name == t.variants[0]]
            lines.append(f"\n  {' = '.join(t.variants)}: {reasons[0] if reasons else ''}")
            d = {k: v for k, v in t.diff.items() if k != "run.seed"}
            lines.append("    diff vs base: " + (", ".join(f"{k}: {_fmt_v(a)} -> {_fmt_v(b)}" for k, (a, b) in d.items())
                                                  or "(the base)"))
        status = ("done" if t.run_id in done else
                  f"pending, evaluates the training of run {reused[t.run_id]}" if t.run_id in reused else "pending")
        lines.append(f"    seed {t.seed:<3} run {t.run_id}  est {_fmt_s(est):>6}  {status}")
    k = concurrency(p.profile, p.resources)
    pending = sum(cost[t.run_id] for t in p.trials if t.run_id not in done)
    unit = "GPU" if p.resources.get("gpu") else "CPU"
    share = p.resources.get("gpu") or p.resources.get("cpu", 1)
    lines.append(f"\nestimated cost: {len(p.trials)} trials, {total * share / 3600:.2f} {unit}-hours in all; "
                 f"{len(p.trials) - len(done & {t.run_id for t in p.trials})} pending, ~{_fmt_s(pending / k)} wall at "
                 f"{k} trial(s) at once" + ("" if unit == "CPU" else " per GPU"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI
def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ism ablate", description="Run an ablation spec as Ray Tune trials tracked in MLflow. "
                                 "Rerunning the same command resumes an interrupted sweep.")
    ap.add_argument("spec", help="ablation spec, e.g. ablations/components.yaml")
    ap.add_argument("--profile", default=os.environ.get("PROFILE") or DEFAULT_PROFILE,
                    help=f"one of {', '.join(PROFILES)} (default {DEFAULT_PROFILE}; env PROFILE)")
    ap.add_argument("--dry-run", action="store_true", help="list the trials, their config diff, resources and cost; run nothing")
    ap.add_argument("--variants", type=_csv(str), default=None, help="comma-separated subset of variants")
    ap.add_argument("--seeds", type=_csv(int), default=None, help="comma-separated seeds (overrides the spec)")
    ap.add_argument("--storage", default=None, help="root of trial run dirs and Ray results (default runs/ablate; env ISM_STORAGE)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite under mlruns/)")
    ap.add_argument("--max-failures", type=int, default=None, help="retries per trial (default from the spec)")
    args = ap.parse_args(argv)
    p = plan(load_spec(args.spec), args.profile, args.variants, args.seeds)
    if args.max_failures is not None:
        p = dataclasses.replace(p, max_failures=args.max_failures)
    storage = storage_root(args.storage)
    if args.dry_run:
        print(describe_plan(p, finished_trials(p, storage), reused_training(p, storage)))
        return 0
    from ism import tune  # Ray and MLflow are imported only when a sweep runs
    return tune.run_sweep(p, storage, tracking_uri=args.tracking_uri)


if __name__ == "__main__":
    sys.exit(main())
