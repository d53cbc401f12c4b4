"""Equal-budget tuning of an ablation spec's arms, each arm one study through the study machinery (ism.study.driver).

Every arm gets exactly `budget` trials (its grid, enqueued), on the held-out tuning seed, judged by the spec's one
objective; its best point becomes the arm's tuned values in the record (ism.ablation.tuning), with the provenance that
decides reuse: the study's fingerprint (the arm's base-config identity, space and objective), budget, trials, seed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from ism.ablation import tuning as TU
from ism.ablation.plan import Spec
from ism.conf.profiles import PROFILES, concurrency
from ism.study.plan import StudyPlan, plan as study_plan
from ism.study.spec import Param, StudySpec


@dataclass(frozen=True)
class ArmStatus:
    """One arm: its study plan, whether the record holds current values, and those values (if any)."""
    arm: TU.Arm
    plan: StudyPlan
    current: bool
    entry: Mapping[str, Any] | None

    @property
    def fingerprint(self) -> str:
        return self.plan.fingerprint()


def _choices(arm: TU.Arm, key: str) -> tuple:
    vals: list = []
    for p in arm.points:
        if key in p and p[key] not in vals:
            vals.append(p[key])
    return tuple(vals)


def arm_plan(spec: Spec, tune: TU.Tune, arm: TU.Arm, profile: str) -> StudyPlan:
    """The arm's study: the spec's variant as base, its grid as categorical space with every point enqueued."""
    prof = PROFILES[profile]
    raw = StudySpec(
        name=f"{spec.name}.tune.{arm.variant}", path=spec.path,
        description=f"equal-budget tuning of arm {arm.variant} of {spec.name}: {', '.join(arm.keys)}",
        preset=None, ablation=str(Path(spec.path).resolve()), variant=arm.variant, overrides={},
        space=tuple(Param(k, "categorical", choices=_choices(arm, k)) for k in arm.keys),
        objective_raw=dict(tune.objective), n_trials=tune.budget,
        parallelism=concurrency(profile, prof.resources), sampler={"type": "random", "seed": 0}, pruner={},
        resources={}, max_failures=1, seed=tune.seed, enqueue=tuple(dict(p) for p in arm.points), profiles={},
        text=yaml.safe_dump({"tune": {"arm": arm.variant, "points": [dict(p) for p in arm.points],
                                      "objective": dict(tune.objective), "seed": tune.seed}}, sort_keys=False))
    p = study_plan(raw, profile)
    # The study is named by its fingerprint, so a changed default or grid opens a new study instead of resuming a
    # stale one (the Optuna storage refuses a study whose fingerprint moved).
    return dataclasses.replace(p, spec=dataclasses.replace(raw, name=f"{raw.name}.{p.fingerprint()[:8]}"))


def status(spec: Spec, tune: TU.Tune, profile: str, record: Mapping[str, Any], retune: bool = False) -> list[ArmStatus]:
    """Each arm's study and whether its recorded values are current (never current when retune)."""
    out = []
    for arm in tune.arms:
        p = arm_plan(spec, tune, arm, profile)
        entry = record.get(arm.variant)
        out.append(ArmStatus(arm, p, not retune and TU.is_current(entry, p.fingerprint(), tune.budget), entry))
    return out


def describe(tune: TU.Tune, arms: list[ArmStatus], path: Path) -> str:
    """The dry run's tuning lines: per arm, its knobs, grid size, carriers and whether it will (re-)tune."""
    lines = [f"tuning: every arm gets {tune.budget} trials on held-out seed {tune.seed} "
             f"(record {path})"]
    for a in arms:
        state = (f"tuned {dict(a.entry['values'])} (record current)" if a.current else
                 "stale: re-tunes (config, grid, budget or objective changed)" if a.entry else "not tuned yet: tunes first")
        carriers = f"; carried by {', '.join(a.arm.applies_to)}" if a.arm.applies_to else ""
        lines.append(f"  arm {a.arm.variant}: {', '.join(a.arm.keys)} over {len(a.arm.points)} points{carriers}; {state}")
    return "\n".join(lines)


def best_entry(p: StudyPlan, study, tune: TU.Tune, spec: Spec, profile: str, reused: bool) -> dict[str, Any]:
    """The record entry of a finished arm study: the best point, every trial, and the provenance."""
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = min(done, key=lambda t: t.value) if p.objective.direction == "minimize" else max(done, key=lambda t: t.value)
    arm = next(a for a in tune.arms if p.spec.variant == a.variant)
    return {"values": p.decode(best.params), "objective_value": float(best.value), "carried_by": list(arm.applies_to),
            "trials": [{"values": p.decode(t.params), "objective_value": float(t.value)} for t in done],
            "provenance": {"spec": spec.name, "profile": profile, "budget": tune.budget, "trials": len(done),
                           "seed": tune.seed, "objective": p.objective.describe(), "study": p.study_name,
                           "fingerprint": p.fingerprint()}}


def ensure_tuned(spec: Spec, tune: TU.Tune, profile: str, path: Path, url: str, root: Path, tracking_uri: str,
                 cache_root: Path, retune: bool = False, say: Callable[[str], None] = print,
                 train_fn=None) -> tuple[int, dict[str, Any]]:
    """Run every arm whose record is missing or stale (or all with retune); (exit status, record)."""
    from ism.study.driver import run_study
    from ism.study.storage import open_study
    record = TU.read_record(path)
    for a in status(spec, tune, profile, record, retune):
        if a.current:
            say(f"tuning: arm {a.arm.variant} reuses {dict(a.entry['values'])} (record current)")
            continue
        say(f"tuning: arm {a.arm.variant}: {len(a.arm.points)} trials over {', '.join(a.arm.keys)}")
        rc = run_study(a.plan, url, root, tracking_uri, cache_root, train_fn=train_fn)
        if rc != 0:
            return rc, record
        record[a.arm.variant] = best_entry(a.plan, open_study(a.plan, url, create=False), tune, spec, profile, False)
        TU.write_record(path, spec.name, profile, record)
        say(f"tuning: arm {a.arm.variant} -> {record[a.arm.variant]['values']}")
    return 0, record
