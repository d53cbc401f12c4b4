"""The bodies of trials (run inside Ray workers, free of Ray): train with resume, report progress through the hooks
the Ray adapter hands in, log to the trial's MLflow child run.

Hooks: report(metrics), report_checkpoint(metrics, path), restore(run_dir) (copy a checkpoint the scheduler
persisted back into the run dir), node() -> (node id, node ip).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from ism.training import checkpoint as ckpt
from ism.system import machine, store
from ism import tracking
from ism.system.accounting import PhaseClock
from ism.conf.config import ConfigError, from_dict
from ism.evaluation.evaluate import make_evaluator
from ism.ablation.trial_objective import METRIC, Objective
from ism.training.train import Diverged, adopt_training, train


class Hooks(Protocol):
    """What a trial body needs from the scheduler (ism.ablation.ray_adapter.RayHooks)."""

    def report(self, metrics: dict) -> None: ...
    def report_checkpoint(self, metrics: dict, path: str) -> None: ...
    def restore(self, run_dir: Path) -> None: ...
    def node(self) -> tuple[str, str]: ...


def hardware(cfg) -> str:
    """What the trial ran on: GPU name when it trains on CUDA, CPU model and capability, cores and torch threads."""
    out = f"{machine.describe()}, {torch.get_num_threads()} torch threads"
    if torch.cuda.is_available() and cfg.run.device != "cpu":
        out = f"{torch.cuda.get_device_name()}; {out}"
    return out


def resumed_at(stats: Path) -> dict[str, float]:
    """{step, loss} of the last stats.jsonl line of an interrupted trial; {} for a fresh one."""
    try:
        last = json.loads(stats.read_text().strip().splitlines()[-1])
        return {"step": int(last["step"]), "loss": float(last.get("loss", float("nan")))}
    except (OSError, IndexError, ValueError, KeyError, TypeError):
        return {}


def adopt(cfg, run_dir: Path, storage: str | None) -> str | None:
    """Adopt a finished training of the same training config from the storage (store.trained_donor), once;
    returns the donor's run id (also on later attempts), or None."""
    if storage and store.unstarted(run_dir):
        donor = store.trained_donor(cfg, Path(storage))
        if donor is not None:
            adopt_training(run_dir, donor, cfg.run.steps)
    return Path(store.read_json(run_dir / store.TRAINING_FROM).get("run_dir", "")).name or None


# Over 60 lines on purpose: a trial's lifecycle in order (restore, adopt, train, evaluate, log, account); each phase is timed by
# one PhaseClock and a retry must re-enter at the same point, so the phases stay in one readable sequence.
def ablation_trial(payload: dict[str, Any], hooks: Hooks, train_fn: Callable | None = None) -> None:
    """One ablation trial: train (resuming), report progress, log to the trial's MLflow child run."""
    train_fn = train_fn or train
    clock = PhaseClock()  # this attempt's wall and CPU time per phase, logged as machine/* metrics at the end
    permanent = (Diverged, ConfigError)  # deterministic: a retry resumes from the same checkpoint and fails alike
    cfg = from_dict(payload["cfg"])
    machine.set_threads(max(1, cfg.run.threads))
    run_dir = Path(payload["trial_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / store.SUMMARY).exists():
        ckpt.newest_valid(run_dir)  # a bad newest checkpoint is moved aside first, so Ray's copy of it can replace it
    hooks.restore(run_dir)
    donor = adopt(cfg, run_dir, payload.get("storage"))
    log = tracking.TrialLog(payload["tracking_uri"], payload["mlflow_run_id"])
    log.running()
    log.tag("ism.started_at", f"{time.time():.3f}")  # the run's start_time is its creation, when it was queued
    node_id, node_ip = hooks.node()
    log.tag("ism.node_id", node_id)
    log.tag("ism.node_ip", node_ip)
    log.tag("ism.hardware", hardware(cfg))
    if donor:
        log.tag("ism.training_from", donor)  # trained once by that trial; this one only evaluates
    latest: dict[str, float] = resumed_at(run_dir / "stats.jsonl")
    if latest:  # the progress line shows where a resumed trial picks up, and its ETA does not count that as speed
        hooks.report({**latest, "resumed": 1, "finished_before": int((run_dir / store.SUMMARY).exists())})
    evaluated: set[int] = set()

    def callback(kind: str, ev: dict) -> None:
        with clock.phase("report"):
            report(kind, ev)

    def report(kind: str, ev: dict) -> None:
        if kind == "metrics":
            log.metrics(ev["step"], ev["metrics"])
            latest.update(step=ev["step"], loss=ev["metrics"].get("loss", float("nan")))
            hooks.report(dict(latest))
        elif kind == "checkpoint":
            hooks.report_checkpoint({**latest, "step": ev["step"]}, ev["path"])
        elif kind == "eval":
            log.eval_metrics(ev["step"], ev["metrics"])
            evaluated.add(ev["step"])
            latest.update({k: v for k, v in ev["metrics"].items() if isinstance(v, (int, float))})
            hooks.report(dict(latest))

    evaluator = make_evaluator(cfg, payload["cache_root"]) if cfg.eval.at_end or cfg.eval.every_steps else None

    def timed_evaluator(*args, **kw):
        with clock.phase("eval"):
            return evaluator(*args, **kw)

    try:
        with clock.phase("train"):
            summary = train_fn(cfg, run_dir, callback, timed_evaluator if evaluator else None,
                               crash_at_step=payload.get("crash_at_step"), cache_root=payload["cache_root"])
    except permanent as e:
        log.tag("ism.permanent", "1")
        log.finish("FAILED", f"{type(e).__name__}: {e}")
        hooks.report({**latest, "failed": 1})
        return
    except BaseException as e:
        log.tag("ism.last_error", f"{type(e).__name__}: {e}"[:5000])
        log.tag("ism.failures", log.failures() + 1)
        log.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")  # the driver records the final reason
        raise
    with clock.phase("report"):
        log.replay_stats(run_dir / "stats.jsonl")   # a run finished by another sweep, or killed while logging
        final_metrics = {k: summary[k] for k in ("wall_time_s", "peak_mem_mb", "final_loss", "params") if k in summary}
        if summary["steps"] not in evaluated:  # finished before this process (another sweep, or killed after eval)
            final_metrics.update(summary.get("metrics", {}))
        log.eval_metrics(summary["steps"], final_metrics)
        log.steps_curves(summary.get("metrics", {}))
        log.artifacts(run_dir)
    log.eval_metrics(summary["steps"], clock.metrics())  # this last call and finish() are the only time not counted
    log.finish("FINISHED")
    hooks.report({**latest, **{k: v for k, v in summary.get("metrics", {}).items() if isinstance(v, (int, float))},
                  "step": summary["steps"], "done": 1})


def study_trial(meta: dict[str, Any], hooks: Hooks, tracking_uri: str, objective: dict, train_fn: Callable | None = None,
                cache_root: str | None = None) -> None:
    """One study trial: train with intermediate evaluations, report the objective, log to MLflow."""
    clock = PhaseClock()  # the callback's logging is charged to "report", as in ablation trials
    cfg = from_dict(meta["cfg"])
    machine.set_threads(max(1, cfg.run.threads))
    obj = Objective(objective["terms"], objective["metric"], tuple(objective["steps"]), objective["direction"])
    log = tracking.TrialLog(tracking_uri, meta["mlflow_run_id"])
    log.running()
    node_id, node_ip = hooks.node()  # where each trial (and each resumed attempt) ran, as for ablation trials
    log.tag("ism.node_id", node_id)
    log.tag("ism.node_ip", node_ip)

    def callback(kind: str, ev: dict) -> None:
        with clock.phase("report"):
            report(kind, ev)

    def report(kind: str, ev: dict) -> None:
        if kind == "metrics":
            log.metrics(ev["step"], ev["metrics"])
        elif kind == "eval":
            value = obj.value(ev["metrics"])
            log.eval_metrics(ev["step"], {**ev["metrics"], METRIC: value})
            if ev["step"] < cfg.run.steps:  # the final value is reported once training and logging are done
                hooks.report({METRIC: value, "eval_step": ev["step"], "final": 0})

    run_dir = Path(meta["trial_dir"])
    try:
        summary = (train_fn or train)(cfg, run_dir, callback, make_evaluator(cfg, cache_root), cache_root=cache_root)
    except Diverged as e:  # a property of the sampled point, not a fault: no retry, the study records a FAIL
        log.tag("ism.error", str(e))
        hooks.report({METRIC: float("nan"), "eval_step": e.step, "final": 1, "diverged": 1})
        return
    except BaseException as e:
        log.tag("ism.error", f"{type(e).__name__}: {e}"[:5000])
        raise
    value = obj.value(summary["metrics"])
    log.replay_stats(run_dir / "stats.jsonl")
    log.eval_metrics(summary["steps"], {**summary["metrics"], METRIC: value,
                                        **{k: summary[k] for k in ("wall_time_s", "peak_mem_mb") if k in summary}})
    log.artifacts(run_dir)
    hooks.report({METRIC: value, "eval_step": summary["steps"], "final": 1})
