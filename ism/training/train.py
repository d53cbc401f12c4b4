"""The training loop: Config -> checkpoints, stats.jsonl, callback events. Knows nothing of Ray or MLflow.

Rerunning the same config resumes from the newest checkpoint in its run directory and ends exactly where an
uninterrupted run ends: all randomness of step s derives from (seed, s).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from ism.training import checkpoint as ckpt
from ism.system import machine, store
from ism.conf.config import Config, ConfigError, dump_yaml, from_dict, identity_dict, read_yaml, run_id
from ism.training.data import Dataset, load_dataset
from ism.training.models import count_params
from ism.training.objective.coupling import PairSource
from ism.training.objective.losses import batch_loss, row_loss
from ism.training.objective.methods import build_rows
from ism.training.objective.targets import KIND_NAMES
from ism.training.premetric import feature_distance
from ism.training.reflow import reflow_pairs
from ism.training.rng import derive_seed, generator
from ism.training.run_state import State, peak_memory_mb, resolve_device

Callback = Callable[[str, dict], None]
Evaluator = Callable[[dict, Config, Dataset, int, Path], tuple[list, dict]]
CRASH_MARK = ".crash_injected"  # in the run dir: the injected crash already happened (a retry must get past it)


class Diverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""

    def __init__(self, step: int, run_dir: Path):
        super().__init__(f"diverged at step {step} (non-finite loss); last good checkpoint kept in {run_dir / 'checkpoints'}")
        self.step = step


def _prepare_run_dir(cfg: Config, run_dir: Path) -> None:
    """Write config.yaml, or check that an existing run dir holds the same run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    if path.exists():
        old = from_dict(read_yaml(path)[0])
        if identity_dict(old) != identity_dict(cfg):
            raise ConfigError(f"{run_dir} holds a different run (id {run_id(old)}, this config is {run_id(cfg)}); "
                              "choose another run dir or remove it")
    store.atomic_write(path, dump_yaml(cfg))


def _lr(cfg: Config, step: int) -> float:
    w = cfg.optim.warmup_steps
    return cfg.optim.lr * min(1.0, (step + 1) / w) if w > 0 else cfg.optim.lr


def _trim_stats(path: Path, upto: int) -> None:
    """Drop stats lines logged after the checkpoint we resume from, so a resumed log equals an uninterrupted one."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= upto]
    store.atomic_write(path, "".join(ln + "\n" for ln in keep))


def _save(state: State, cfg: Config, run_dir: Path, step: int, pairs: PairSource, elapsed: float,
          last_loss: float) -> Path:
    # No global RNG state: every step reseeds torch from (seed, step), so a resumed run needs none. The last step's
    # loss travels with the checkpoint: a run resumed at its end reports it as its final loss.
    path = ckpt.save({**state.state_dict(), "step": step, "elapsed_s": elapsed, "pairs": pairs.state_dict(step),
                      "config": dump_yaml(cfg), "last_loss": last_loss}, store.checkpoint_path(run_dir, step))
    store.prune(run_dir, cfg.run.keep_checkpoints)
    return path


def _logged_loss(stats_path: Path, step: int) -> float:
    """The loss stats.jsonl logged at `step` (checkpoints written before the loss travelled with them), else NaN."""
    try:
        lines = [json.loads(ln) for ln in stats_path.read_text().splitlines() if ln.strip()]
    except (OSError, ValueError):
        return float("nan")
    return next((float(r["loss"]) for r in reversed(lines) if r.get("step") == step and "loss" in r), float("nan"))


def _json_safe(x: Any) -> Any:
    """NaN and Inf as null: summary.json is standard JSON (readers in other languages reject NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _read_summary(path: Path) -> dict[str, Any]:
    """summary.json as train() returns it (its nulls back as NaN: a run of 0 steps has no final loss)."""
    summary = json.loads(path.read_text())
    nan = float("nan")
    summary.update({k: nan for k in ("final_loss", "wall_time_s", "peak_mem_mb") if summary.get(k, 0) is None})
    summary["metrics"] = {k: nan if v is None else v for k, v in (summary.get("metrics") or {}).items()}
    return summary


def adopt_training(run_dir: Path, donor: Path, steps: int) -> bool:
    """Seed an unstarted run dir with a finished training of the same training config (hard link of the final
    checkpoint, copy of its stats.jsonl): train() then resumes at the last step and only evaluates."""
    run_dir, donor = Path(run_dir), Path(donor)
    src = store.checkpoint_path(donor, steps)
    if not store.unstarted(run_dir) or not src.is_file():
        return False
    if (donor / "stats.jsonl").is_file():
        store.atomic_write(run_dir / "stats.jsonl", (donor / "stats.jsonl").read_text())
    store.write_json(run_dir / store.TRAINING_FROM, {"run_dir": str(donor), "step": steps})
    store.place(src, store.checkpoint_path(run_dir, steps))  # last: the checkpoint marks the training as present
    return True


class Meter:
    """Running sums of the logged quantities between two log lines: per-kind losses are means over their rows, the
    rest means over steps."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, loss: float, per_row: torch.Tensor, kind: torch.Tensor, diag: dict[str, float]) -> None:
        with torch.no_grad():
            for k, name in KIND_NAMES.items():
                m = kind == k
                if m.any():
                    self.acc[f"loss_{name}"] = self.acc.get(f"loss_{name}", 0.0) + float(per_row[m].sum())
                    self.counts[f"loss_{name}"] = self.counts.get(f"loss_{name}", 0.0) + float(m.sum())
        for k, v in {"loss": loss, **diag}.items():
            self.acc[k] = self.acc.get(k, 0.0) + v
            self.counts.setdefault(k, 0.0)
            self.counts[k] += 0.0 if k.startswith("loss_") else 1.0

    def flush(self, span_s: float) -> dict[str, float]:
        """The means since the last flush, with seconds per step over `span_s`; starts afresh."""
        n_steps = max(1, int(self.counts["loss"]))
        metrics = {k: self.acc[k] / max(self.counts[k], 1e-12) for k in self.acc}
        metrics["sec_per_step"] = span_s / n_steps
        self.acc, self.counts = {}, {}
        return metrics


def _resume(state: State, pairs: PairSource, run_dir: Path, device, stats_path: Path) -> tuple[int, float, float]:
    """Load the newest checkpoint that verifies (a bad newest one is moved aside, an older one used) into state and
    pairs, and cut stats.jsonl back to it: (start step, elapsed s, last loss); (0, 0, NaN) for a fresh run."""
    start, elapsed, last_loss = 0, 0.0, float("nan")
    found = ckpt.newest_valid(run_dir, map_location=device)
    if found is not None:
        sd = found[1]
        state.load_state_dict(sd)
        start, elapsed = int(sd["step"]), float(sd["elapsed_s"])
        pairs.load_state_dict(sd["pairs"], start)
        last_loss = float(sd["last_loss"]) if "last_loss" in sd else _logged_loss(stats_path, start)
    _trim_stats(stats_path, start)
    return start, elapsed, last_loss


def train_step(state: State, pairs: PairSource, cfg: Config, step: int, device: torch.device, amp, null: int,
               features, meter: Meter, run_dir: Path) -> float:
    """One optimisation step at `step`: its batch and targets from (seed, step), the loss, the update, the EMAs; adds
    to `meter` and returns the loss (Diverged on a non-finite loss, before the update)."""
    torch.manual_seed(derive_seed(cfg.run.seed, step, "torch"))  # dropout etc. draw from (seed, step) too
    x1, y, x0, pdiag = pairs.batch(step)
    x1, y, x0 = x1.to(device, non_blocking=True), y.to(device), x0.to(device, non_blocking=True)
    for group in state.optim.param_groups:
        group["lr"] = _lr(cfg, step)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        rows, tdiag = build_rows(x1, y, x0, state.nets(), cfg, generator(cfg.run.seed, step, "rows"), null, step)
        pred = state.model(rows.xt, rows.t, rows.k, rows.y, rows.w)
    per_row, ldiag = row_loss(pred.float(), rows.target.float(), cfg, rows, features)
    loss = batch_loss(per_row, rows.kind, cfg)
    if not torch.isfinite(loss):
        raise Diverged(step, run_dir)
    state.optim.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.optim.grad_clip)
    state.optim.step()
    for e in state.unique_emas():
        e.update(state.model)
    value = float(loss.detach())
    meter.add(value, per_row.detach(), rows.kind, {**pdiag, **tdiag, **ldiag})
    return value


def _log_line(stats_path: Path, done: int, metrics: dict[str, float], bar, lines: bool, cfg: Config) -> None:
    """Append one stats.jsonl record and show it (the bar's postfix, or a line when stderr is a log file)."""
    with open(stats_path, "a") as fh:
        fh.write(json.dumps({"step": done, "time": time.time(), **metrics}) + "\n")
    bar.set_postfix(loss=f"{metrics['loss']:.4f}")
    if lines:
        print(f"train {run_id(cfg)}: step {done}/{cfg.run.steps} loss {metrics['loss']:.4f} "
              f"{metrics['sec_per_step']:.3f} s/step", file=sys.stderr, flush=True)


# Over 60 lines on purpose: the loop of one step index: resume, step, log, checkpoint and evaluate are each a helper, and their order
# within a step is what bit-identical resume depends on (tests/test_train.py); one function keeps it in view.
def train(cfg: Config, run_dir: str | Path | None = None, callback: Callback | None = None,
          evaluator: Evaluator | None = None, crash_at_step: int | None = None,
          cache_root: str | Path | None = None) -> dict[str, Any]:
    """Train (or resume, or return the summary of a finished run) and return the run summary.

    crash_at_step: fault injection for resume and retry tests; the run raises once when it reaches that step.
    cache_root: the cache root the commands take from $ISM_CACHE: preprocessed datasets under data/, the domain CNN
    of loss.distance=feature_huber; None: the library defaults.
    """
    run_dir = Path(run_dir) if run_dir else Path(cfg.run.out_dir) / run_id(cfg)
    emit = callback or (lambda kind, payload: None)
    summary_path = run_dir / store.SUMMARY
    data_cache = Path(cache_root) / "data" if cache_root else None
    # The data first: a bad data.path is a ConfigError before anything (config.yaml, the run dir) is written.
    data = None if summary_path.exists() else load_dataset(cfg.data, data_cache)
    _prepare_run_dir(cfg, run_dir)
    if summary_path.exists():
        summary = _read_summary(summary_path)
        emit("done", {"step": summary["steps"], "summary": summary})
        return summary
    device, amp = resolve_device(cfg)
    if cfg.run.threads:
        machine.set_threads(cfg.run.threads)
    data = data or load_dataset(cfg.data, data_cache)  # none yet when a concurrent twin wrote the summary meanwhile
    state = State(cfg, data, device)
    fixed = None
    if cfg.data.coupling == "reflow":
        rp = reflow_pairs(cfg, run_dir, device, data.shape,
                          log=lambda m: print(m, file=sys.stderr) if cfg.run.progress else None)
        emit("reflow", {"pairs": len(rp.x0), "shard": str(rp.path)})
        fixed = (rp.x0, rp.x1, rp.y)
    pairs = PairSource(data, cfg, device, fixed)
    stats_path = run_dir / "stats.jsonl"
    start, elapsed, last_loss = _resume(state, pairs, run_dir, device, stats_path)
    null, nets = data.num_classes, state.nets()
    features = feature_distance(cfg, data, cache_root, device)
    meter = Meter()
    t_tick = time.perf_counter()
    # A bar on a terminal; when stderr is a file (a log), one line per log_every steps instead of every update.
    lines = cfg.run.progress and not sys.stderr.isatty()
    bar = tqdm(total=cfg.run.steps, initial=start, disable=not cfg.run.progress or lines, dynamic_ncols=True,
               desc=f"train {run_id(cfg)}", file=sys.stderr)
    for step in range(start, cfg.run.steps):
        if step == crash_at_step and not (run_dir / CRASH_MARK).exists():
            (run_dir / CRASH_MARK).touch()
            raise RuntimeError(f"injected crash at step {step} (fault injection)")
        try:
            last_loss = train_step(state, pairs, cfg, step, device, amp, null, features, meter, run_dir)
        except Diverged:
            bar.close()
            raise
        bar.update(1)
        done = step + 1
        if done % cfg.run.log_every == 0 or done == cfg.run.steps:
            now = time.perf_counter()
            elapsed += now - t_tick
            metrics = meter.flush(now - t_tick)
            metrics.update(lr=_lr(cfg, step), peak_mem_mb=peak_memory_mb(device), wall_time_s=elapsed)
            t_tick = now
            _log_line(stats_path, done, metrics, bar, lines, cfg)
            emit("metrics", {"step": done, "metrics": metrics})
        if done % cfg.run.checkpoint_every == 0 or done == cfg.run.steps:
            path = _save(state, cfg, run_dir, done, pairs, elapsed + time.perf_counter() - t_tick, last_loss)
            emit("checkpoint", {"step": done, "path": str(path)})
        if evaluator and cfg.eval.every_steps and done % cfg.eval.every_steps == 0 and done != cfg.run.steps:
            rows_e, metrics_e = evaluator(nets, cfg, data, done, run_dir)
            emit("eval", {"step": done, "rows": rows_e, "metrics": metrics_e})
    bar.close()
    if start == cfg.run.steps == 0:
        _save(state, cfg, run_dir, 0, pairs, elapsed, last_loss)
    eval_metrics: dict[str, float] = {}
    if evaluator and cfg.eval.at_end:
        rows_e, eval_metrics = evaluator(nets, cfg, data, cfg.run.steps, run_dir)
        emit("eval", {"step": cfg.run.steps, "rows": rows_e, "metrics": eval_metrics})
    summary = {"run_id": run_id(cfg), "steps": cfg.run.steps, "final_loss": last_loss, "wall_time_s": elapsed,
               "peak_mem_mb": peak_memory_mb(device), "params": count_params(state.model), "device": str(device),
               "resumed_from": start, "metrics": eval_metrics}
    store.atomic_write(summary_path, json.dumps(_json_safe(summary), indent=2, allow_nan=False))
    emit("done", {"step": cfg.run.steps, "summary": summary})
    return summary


