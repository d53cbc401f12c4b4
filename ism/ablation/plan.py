"""Ablation specs (ablations/*.yaml) and profiles, resolved into a validated trial plan before anything runs.

A spec is a base (a preset plus overrides) and named variants (each a delta with a one-line reason), crossed with
seeds. A profile (smoke, embedded, gpu-*) picks the preset, the per-trial resources and the run-scale settings;
a spec may adjust seeds, eval steps and overrides per profile. Every trial's Config is resolved here, so a bad spec
fails with a ConfigError before Ray starts. Variants whose resolved configs are identical share one trial.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ism.ablation import budget
from ism.conf import profiles
from ism.system import store
from ism.conf import specs as S
from ism.ablation import tuning as TU
from ism.conf.config import (Config, ConfigError, deep_merge, diff, from_dict, load_yaml, preset_delta, read_yaml_mapping,
                        replace, run_id)
from ism.errors import suggest
from ism.conf.profiles import DEFAULT_PROFILE, PROFILES


SPEC_KEYS = ("name", "description", "base", "variants", "seeds", "eval_steps", "resources", "max_failures",
             "profiles", "groups", "tune", "budget")
VARIANT_KEYS = ("reason", "overrides")
BASE_KEYS = ("preset", "config", "overrides")
PROFILE_KEYS = ("seeds", "eval_steps", "overrides", "variant_overrides", "variants", "resources", "max_failures", "note",
                "budget")


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
    tune_raw: Mapping[str, Any] | None = None   # the equal-budget tuning block (ism.ablation.tuning), parsed per profile
    budget: str | None = None  # ism.ablation.budget.parse form; a profile's `budget:` (profiles[p]["budget"]) wins

    def tune(self, profile: str) -> TU.Tune | None:
        """The tune block resolved for a profile (None without one)."""
        return TU.parse(f"{self.path}: tune", self.tune_raw, [v.name for v in self.variants], profile)

    def budget_for(self, profile: str) -> str | None:
        """The budget text that applies on `profile`: the profile's own, else the spec's."""
        return (self.profiles.get(profile) or {}).get("budget") or self.budget


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
    tuning: Mapping[str, Any] = field(default_factory=dict)   # {arm: record entry} of the tuned values applied
    # Adaptive seeds (ism.ablation.adaptive): the run ids this round may run or report (None: every trial), and the
    # record of the rounds so far (rule, budget, rounds, why each trial left out was not run).
    scope: frozenset[str] | None = None
    adaptive: Mapping[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> tuple[Trial, ...]:
        """The trials in scope: what this run of the sweep runs, settles and summarises."""
        return self.trials if self.scope is None else tuple(t for t in self.trials if t.run_id in self.scope)

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data (logged as plan.json on the parent run)."""
        return {"spec": self.spec.name, "profile": self.profile, "preset": self.preset, "sweep_id": self.sweep_id,
                "seeds": list(self.seeds), "variants": list(self.variants), "resources": dict(self.resources),
                "max_failures": self.max_failures, "notes": list(self.notes),
                "groups": {k: list(v) for k, v in self.spec.groups.items()},
                "reasons": {v.name: v.reason for v in self.spec.variants if v.name in self.variants},
                "trials": [{"run_id": t.run_id, "variants": list(t.variants), "seed": t.seed,
                            "diff": {k: list(v) for k, v in t.diff.items()}} for t in self.trials],
                "tuning": {k: dict(v) for k, v in self.tuning.items()},
                **({"adaptive": dict(self.adaptive)} if self.adaptive else {})}


# ----------------------------------------------------------------------------------------------- spec parsing
# Over 60 lines on purpose: one shape check per spec key, in the file's order, each with its own error text (exit 2 names
# the key); a straight list reads better than helpers that each check one key.
def load_spec(path: str | Path) -> Spec:
    """Parse and shape-check a spec file (configs are resolved and validated by plan())."""
    p = Path(path)
    raw, text = read_yaml_mapping(p, "ablation spec", f"a mapping with keys {', '.join(SPEC_KEYS)}")
    S.check_kind(p, raw, "ablation")
    S.check_keys(str(p), raw, SPEC_KEYS)
    name = store.check_name(f"{p}: name", raw.get("name") or p.stem)
    base, base_over = S.base(p, raw, BASE_KEYS)
    preset = base.get("preset")
    if base.get("config"):  # a delta file, e.g. written by `ism study --export-best`; the spec's overrides win
        delta = load_yaml(p.parent / str(base["config"]))
        file_preset = delta.pop("preset", None)
        preset = preset or file_preset
        base_over = deep_merge(delta, base_over)
        if file_preset is not None and preset == file_preset:
            preset_delta(preset)  # a preset named by the delta file must exist too
    variants_raw = S.mapping(f"{p}: variants", raw.get("variants"))
    if not variants_raw:
        raise ConfigError(f"{p}: variants: at least one variant is required (name: {{reason: ..., overrides: {{...}}}})")
    variants = []
    for vname, v in variants_raw.items():
        where = f"{p}: variants.{vname}"
        store.check_name(f"{p}: variants", vname)
        v = S.mapping(where, v)
        S.check_keys(where, v, VARIANT_KEYS)
        if not str(v.get("reason", "")).strip():
            raise ConfigError(f"{where}: a one-line 'reason' is required")
        variants.append(Variant(str(vname), str(v["reason"]).strip(), S.overrides(f"{where}.overrides", v.get("overrides"))))
    names = [v.name for v in variants]
    profiles = S.mapping(f"{p}: profiles", raw.get("profiles"))
    for pname, adj in profiles.items():
        if pname not in PROFILES:
            raise ConfigError(f"{p}: profiles: unknown profile '{pname}'; choose one of {', '.join(PROFILES)}."
                              + suggest(str(pname), PROFILES))
        adj = S.mapping(f"{p}: profiles.{pname}", adj)
        S.check_keys(f"{p}: profiles.{pname}", adj, PROFILE_KEYS)
        vo = S.mapping(f"{p}: profiles.{pname}.variant_overrides", adj.get("variant_overrides"))
        for vn in [*(adj.get("variants") or ()), *vo]:
            if vn not in names:
                raise ConfigError(f"{p}: profiles.{pname}: unknown variant '{vn}'; the spec has {', '.join(names)}."
                                  + suggest(str(vn), names))
        if adj.get("budget") is not None:
            budget.parse(adj["budget"], f"{p}: profiles.{pname}.budget")
        adj["variant_overrides"] = {vn: S.overrides(f"{p}: profiles.{pname}.variant_overrides.{vn}", d) for vn, d in vo.items()}
        profiles[pname] = adj
    groups = {}
    for gname, members in S.mapping(f"{p}: groups", raw.get("groups")).items():
        if not isinstance(members, (list, tuple)) or not members:
            raise ConfigError(f"{p}: groups.{gname}: expected a non-empty list of variant names")
        for vn in members:
            if vn not in names:
                raise ConfigError(f"{p}: groups.{gname}: unknown variant '{vn}'; the spec has {', '.join(names)}."
                                  + suggest(str(vn), names))
        groups[str(gname)] = tuple(members)
    mf = raw.get("max_failures", 2)
    if isinstance(mf, bool) or not isinstance(mf, int) or mf < 0:
        raise ConfigError(f"{p}: max_failures: expected an integer >= 0, got {mf!r}")
    tune = raw.get("tune")
    for prof in [DEFAULT_PROFILE, *S.mapping(f"{p}: tune.profiles", (tune or {}).get("profiles") if isinstance(tune, Mapping) else None)]:
        if prof not in PROFILES:
            raise ConfigError(f"{p}: tune.profiles: unknown profile '{prof}'; choose one of {', '.join(PROFILES)}."
                              + suggest(str(prof), PROFILES))
        TU.parse(f"{p}: tune", tune, names, prof)   # shape errors before anything runs
    return Spec(name=name, path=str(p), description=str(raw.get("description", "")).strip(), base_preset=preset,
                base_overrides=base_over, variants=tuple(variants),
                seeds=S.int_list(f"{p}: seeds", raw.get("seeds", [0])),
                eval_steps=S.int_list(f"{p}: eval_steps", raw["eval_steps"], 1) if raw.get("eval_steps") is not None else None,
                resources=S.resources(f"{p}: resources", raw.get("resources")), max_failures=mf, profiles=profiles,
                groups=groups, text=text, tune_raw=tune,
                budget=_budget_text(raw.get("budget"), f"{p}: budget"))


def _budget_text(v: Any, where: str) -> str | None:
    """The spec's budget as text, checked by ism.ablation.budget.parse (None when absent)."""
    if v is None:
        return None
    budget.parse(v, where)
    return str(v)


# ----------------------------------------------------------------------------------------------- planning
def _resolve(where: str, layers: list[Mapping[str, Any]]) -> Config:
    merged: dict[str, Any] = {}
    try:
        for layer in layers:
            merged = deep_merge(merged, layer)
        return from_dict(merged)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


TEACHER_REF = "variant:"   # data.reflow_teacher: variant:<name> = that variant's same-seed trial in this sweep


def _resolve_teachers(where: str, cfgs: dict[tuple[str, int], Config], names: list[str]) -> dict[tuple[str, int], Config]:
    """Replace data.reflow_teacher=variant:<name> by the run id of that variant's trial with the same seed.

    Teachers are resolved first (a teacher may itself be a reflow student: k-rectified flow); a reference to a
    variant outside the plan or a cycle is a ConfigError."""
    out = dict(cfgs)
    chosen = {vn for vn, _ in cfgs}

    def ref(cfg: Config) -> str | None:
        t = cfg.data.reflow_teacher
        return t[len(TEACHER_REF):] if cfg.data.coupling == "reflow" and t.startswith(TEACHER_REF) else None

    def resolve(key: tuple[str, int], seen: tuple[str, ...]) -> Config:
        vn, seed = key
        tv = ref(out[key])
        if tv is None:
            return out[key]
        if tv in seen:
            raise ConfigError(f"{where}: variant '{vn}': data.reflow_teacher forms a cycle: {' -> '.join(seen + (tv,))}")
        if tv not in names:
            raise ConfigError(f"{where}: variant '{vn}': data.reflow_teacher names unknown variant '{tv}'; the spec has "
                              f"{', '.join(names)}." + suggest(tv, names))
        if tv not in chosen:
            raise ConfigError(f"{where}: variant '{vn}' needs its teacher '{tv}' in the same sweep; add it to --variants")
        teacher = resolve((tv, seed), seen + (tv,))
        out[key] = replace(out[key], **{"data.reflow_teacher": run_id(teacher)})
        return out[key]

    for key in cfgs:
        resolve(key, (key[0],))
    return out


def teacher_of(t: Trial, run_ids) -> str | None:
    """The run id of t's reflow teacher when that teacher is a trial of the same plan (run_ids), else None."""
    c = t.cfg.data
    return c.reflow_teacher if c.coupling == "reflow" and c.reflow_teacher in run_ids else None


def phases(trials: list[Trial], all_trials, trained: set[str] = frozenset()) -> list[list[Trial]]:
    """Trials grouped so that every reflow teacher of the plan runs in an earlier group than its students (order kept
    within a group); a student whose teacher is already finished (`trained`: run ids with summary.json, though their
    MLflow child may still be pending) joins the first group."""
    by_id = {t.run_id: t for t in all_trials}
    pending = {t.run_id for t in trials} - set(trained)

    def depth(t: Trial) -> int:
        tid = teacher_of(t, by_id)
        return 0 if tid is None or tid not in pending else 1 + depth(by_id[tid])
    out: dict[int, list[Trial]] = {}
    for t in trials:
        out.setdefault(depth(t), []).append(t)
    return [out[k] for k in sorted(out)]


def components(cfg: Config) -> dict[str, bool]:
    """Which iSM components a config switches on (MLflow tags, report grouping)."""
    intrinsic = cfg.guidance.mode == "intrinsic"
    return {"intrinsic": intrinsic, "interval": intrinsic and cfg.guidance.t_interval > 0,
            "wavelet": cfg.wavelet.enabled, "sot": cfg.ot.enabled, "twin_ema": cfg.ema.twin}


# Over 60 lines on purpose: one resolution order (profile, base, variant, tuned values, seed) that run identity depends on;
# splitting it would scatter that order over helpers that each need the whole spec.
def plan(spec: Spec, profile: str = DEFAULT_PROFILE, variants: list[str] | None = None,
         seeds: list[int] | None = None, tuning: Mapping[str, Mapping[str, Any]] | None = None) -> Plan:
    """Resolve every trial's Config (raising ConfigError on the first bad one) and merge identical configs.

    tuning: the record's current arms ({arm: entry}, ism.ablation.tuning); each variant carrying an arm gets its values,
    after its own overrides (so they change its run identity)."""
    prof = profiles.get(profile)
    adj = spec.profiles.get(profile, {})
    where = f"{spec.path} (profile {profile})"
    preset = spec.base_preset or prof.preset
    resources = {**S.resources("profile", prof.resources), **spec.resources,
                 **S.resources(f"{where}: resources", adj.get("resources"))}
    S.check_trial_resources(where, resources)
    threads = max(1, int(resources.get("cpu", 1)))   # torch threads = the trial's CPU share
    names = [v.name for v in spec.variants]
    chosen = list(adj.get("variants") or names)
    if variants:
        for vn in variants:
            if vn not in names:
                raise ConfigError(f"--variants: unknown variant '{vn}'; {spec.name} has {', '.join(names)}." + suggest(vn, names))
        chosen = [vn for vn in names if vn in variants]
    seed_list = list(S.int_list(f"{where}: seeds", adj["seeds"]) if "seeds" in adj else spec.seeds)
    if seeds is not None:
        seed_list = list(S.int_list("--seeds", list(seeds)))
    eval_steps = S.int_list(f"{where}: eval_steps", adj["eval_steps"], 1) if "eval_steps" in adj else spec.eval_steps
    head = [preset_delta(preset), spec.base_overrides, {"eval.steps": list(eval_steps)} if eval_steps else {},
            dict(prof.overrides), {"run.threads": threads}, S.overrides(f"{where}: overrides", adj.get("overrides"))]
    base = _resolve(f"{where}: base", head + [{"run.seed": seed_list[0]}])
    by_id: dict[str, Trial] = {}
    order: list[str] = []
    cfgs: dict[tuple[str, int], Config] = {}
    tune = spec.tune(profile)
    tuned = TU.tuned_overrides(tune, tuning or {}) if tune else {}
    for vn in chosen:
        v = next(x for x in spec.variants if x.name == vn)
        for seed in seed_list:
            cfgs[vn, seed] = _resolve(f"{where}: variant '{vn}' seed {seed}",
                                      head + [v.overrides, tuned.get(vn, {}),
                                              adj.get("variant_overrides", {}).get(vn, {}), {"run.seed": seed}])
    cfgs = _resolve_teachers(where, cfgs, names)
    for vn in chosen:
        for seed in seed_list:
            cfg = cfgs[vn, seed]
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
    if tune and tune.seed in seed_list:
        raise ConfigError(f"{where}: tune.seed {tune.seed} is one of the sweep's seeds {seed_list}: tune on a held-out "
                          "seed, or the selection flatters the numbers it reports")
    if tune:
        notes.append(f"equal-budget tuning: {tune.budget} trials per arm on held-out seed {tune.seed}"
                     + (f" ({tune.note})" if tune.note else ""))
    # each applied arm names this spec's carriers (a record borrowed from another spec lists that spec's variants)
    applied = {a.variant: {**dict((tuning or {})[a.variant]), "carried_by": list(a.applies_to)}
               for a in (tune.arms if tune else ()) if a.variant in (tuning or {})}
    return Plan(spec, profile, preset, base, trials, resources, mf, tuple(seed_list), tuple(chosen), tuple(notes), sweep_id,
                applied)


# ----------------------------------------------------------------------------------------------- the plan in the store
def sweep_dir(storage: Path, p: Plan) -> Path:
    """Directory of this plan's sweep (spec x profile x trial set)."""
    return store.sweep_dir(storage, p.spec.name, p.profile, p.sweep_id)


def finished_trials(p: Plan, storage: Path) -> set[str]:
    """Run ids of the plan whose training and evaluation finished (by any sweep of any spec)."""
    return store.finished(storage, [t.run_id for t in p.trials])


def reused_training(p: Plan, storage: Path) -> dict[str, str]:
    """{run id: donor run id} for the plan's unstarted trials that will adopt a finished training."""
    donors = store.trained_donors(storage)
    out = {}
    for t in p.trials:
        if store.unstarted(store.trial_dir(storage, t.run_id)):
            donor = store.trained_donor(t.cfg, storage, donors)
            if donor is not None:
                out[t.run_id] = donor.name
    return out
