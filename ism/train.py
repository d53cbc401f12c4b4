"""The training loop: Config -> checkpoints, stats.jsonl, callback events. Knows nothing of Ray or MLflow.

Rerunning the same config resumes from the newest checkpoint in its run directory and ends exactly where an
uninterrupted run ends: all randomness of step s derives from (seed, s).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from tqdm import tqdm

from ism import checkpoint as ckpt
from ism.config import (DEFAULT_PRESET, PRESETS, Config, ConfigError, dump_yaml, from_dict, identity_dict, resolve,
                        run_id)
from ism.data import Dataset, load_dataset
from ism.models import build_model, count_params
from ism.objective.coupling import PairSource
from ism.objective.ema import build_emas
from ism.objective.losses import row_loss
from ism.objective.targets import KIND_NAMES, build_rows
from ism.rng import derive_seed, generator

Callback = Callable[[str, dict], None]
Evaluator = Callable[[dict, Config, Dataset, int, Path], tuple[list, dict]]
CRASH_ENV = "ISM_INJECT_CRASH_AT_STEP"  # fault injection for resume/retry tests: crash once at this step


class Diverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""

    def __init__(self, step: int, run_dir: Path):
        super().__init__(f"diverged at step {step} (non-finite loss); last good checkpoint kept in {run_dir / 'checkpoints'}")
        self.step = step


def resolve_device(cfg: Config) -> tuple[torch.device, torch.dtype | None]:
    """(device, autocast dtype or None) from run.device and run.precision."""
    dev = cfg.run.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {cfg.run.device!r} but CUDA is not available here; use run.device=cpu or auto")
    device = torch.device(dev)
    prec = cfg.run.precision
    if prec == "auto":
        prec = "bf16" if device.type == "cuda" else "fp32"
    return device, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on GPU, process max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prepare_run_dir(cfg: Config, run_dir: Path) -> None:
    """Write config.yaml, or check that an existing run dir holds the same run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    if path.exists():
        old = from_dict(yaml.safe_load(path.read_text()))
        if identity_dict(old) != identity_dict(cfg):
            raise ConfigError(f"{run_dir} holds a different run (id {run_id(old)}, this config is {run_id(cfg)}); "
                              "choose another run dir or remove it")
    ckpt.write_text_atomic(path, dump_yaml(cfg))


class State:
    """Model, EMAs and optimizer of one run."""

    def __init__(self, cfg: Config, data: Dataset, device: torch.device):
        torch.manual_seed(derive_seed(cfg.run.seed, 0, "init"))
        self.model = build_model(cfg, data).to(device)
        self.model.num_classes = data.num_classes  # the null-class index, read by the sampler
        self.emas = build_emas(self.model, cfg)
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                       betas=(cfg.optim.beta1, cfg.optim.beta2))

    def nets(self) -> dict[str, torch.nn.Module]:
        """The three networks by role."""
        return {"online": self.model, "target": self.emas["target"].module, "infer": self.emas["infer"].module}

    def unique_emas(self):
        """EMA objects without the shared duplicate of a single EMA."""
        return list({id(e): e for e in self.emas.values()}.values())

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema_target": self.emas["target"].state_dict(),
                "ema_infer": self.emas["infer"].state_dict(), "optim": self.optim.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.emas["target"].load_state_dict(sd["ema_target"])
        self.emas["infer"].load_state_dict(sd["ema_infer"])
        self.optim.load_state_dict(sd["optim"])


def _lr(cfg: Config, step: int) -> float:
    w = cfg.optim.warmup_steps
    return cfg.optim.lr * min(1.0, (step + 1) / w) if w > 0 else cfg.optim.lr


def _trim_stats(path: Path, upto: int) -> None:
    """Drop stats lines logged after the checkpoint we resume from, so a resumed log equals an uninterrupted one."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= upto]
    ckpt.write_text_atomic(path, "".join(ln + "\n" for ln in keep))


def _save(state: State, cfg: Config, run_dir: Path, step: int, pairs: PairSource, elapsed: float) -> Path:
    path = ckpt.checkpoint_path(run_dir, step)
    ckpt.save_atomic({**state.state_dict(), "step": step, "elapsed_s": elapsed, "rng_cpu": torch.get_rng_state(),
                      "pairs": pairs.state_dict(step), "config": dump_yaml(cfg), "run_id": run_id(cfg), "version": 1},
                     path)
    ckpt.prune(run_dir, cfg.run.keep_checkpoints)
    return path


def adopt_training(run_dir: Path, donor: Path, steps: int) -> bool:
    """Seed an unstarted run dir with a finished training of the same training config (hard link of the final
    checkpoint, copy of its stats.jsonl): train() then resumes at the last step and only evaluates."""
    run_dir, donor = Path(run_dir), Path(donor)
    src = ckpt.checkpoint_path(donor, steps)
    if ckpt.list_checkpoints(run_dir) or (run_dir / "summary.json").exists() or not src.is_file():
        return False
    dst = ckpt.checkpoint_path(run_dir, steps)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    try:
        os.link(src, tmp)  # checkpoints are replaced, never modified in place: sharing the inode is safe
    except OSError:
        shutil.copy2(src, tmp)
    if (donor / "stats.jsonl").is_file():
        ckpt.write_text_atomic(run_dir / "stats.jsonl", (donor / "stats.jsonl").read_text())
    ckpt.write_text_atomic(run_dir / "training_from.json", json.dumps({"run_dir": str(donor), "step": steps}))
    os.replace(tmp, dst)  # last: the checkpoint is what marks the training as present
    return True


def train(cfg: Config, run_dir: str | Path | None = None, callback: Callback | None = None,
          evaluator: Evaluator | None = None) -> dict[str, Any]:
    """Train (or resume, or return the summary of a finished run) and return the run summary."""
    run_dir = Path(run_dir) if run_dir else Path(cfg.run.out_dir) / run_id(cfg)
    emit = callback or (lambda kind, payload: None)
    _prepare_run_dir(cfg, run_dir)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        emit("done", {"step": summary["steps"], "summary": summary})
        return summary
    device, amp = resolve_device(cfg)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    data = load_dataset(cfg.data)
    state = State(cfg, data, device)
    pairs = PairSource(data, cfg)
    start, elapsed = 0, 0.0
    last = ckpt.latest_checkpoint(run_dir)
    if last is not None:
        sd = ckpt.load(last, map_location=device)
        state.load_state_dict(sd)
        start, elapsed = int(sd["step"]), float(sd["elapsed_s"])
        pairs.load_state_dict(sd["pairs"], start)
        torch.set_rng_state(sd["rng_cpu"])
    stats_path = run_dir / "stats.jsonl"
    _trim_stats(stats_path, start)
    null, nets = data.num_classes, state.nets()
    crash_at = int(os.environ.get(CRASH_ENV, "-1"))
    acc: dict[str, float] = {}
    counts: dict[str, float] = {}
    last_loss = float("nan")
    t_tick = time.perf_counter()
    bar = tqdm(total=cfg.run.steps, initial=start, disable=not cfg.run.progress, dynamic_ncols=True,
               desc=f"train {run_id(cfg)}", file=sys.stderr)
    for step in range(start, cfg.run.steps):
        if step == crash_at and not (run_dir / ".crash_injected").exists():
            (run_dir / ".crash_injected").touch()
            raise RuntimeError(f"injected crash at step {step} ({CRASH_ENV})")
        torch.manual_seed(derive_seed(cfg.run.seed, step, "torch"))  # dropout etc. draw from (seed, step) too
        x1, y, x0, pdiag = pairs.batch(step)
        x1, y, x0 = x1.to(device, non_blocking=True), y.to(device), x0.to(device, non_blocking=True)
        for group in state.optim.param_groups:
            group["lr"] = _lr(cfg, step)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            rows, tdiag = build_rows(x1, y, x0, nets, cfg, generator(cfg.run.seed, step, "rows"), null)
            pred = state.model(rows.xt, rows.t, rows.k, rows.y, rows.w)
        per_row, ldiag = row_loss(pred.float(), rows.target.float(), cfg)
        loss = per_row.mean()
        if not torch.isfinite(loss):
            bar.close()
            raise Diverged(step, run_dir)
        state.optim.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.optim.grad_clip)
        state.optim.step()
        for e in state.unique_emas():
            e.update(state.model)
        last_loss = float(loss.detach())
        with torch.no_grad():
            for kind, name in KIND_NAMES.items():
                m = rows.kind == kind
                if m.any():
                    acc[f"loss_{name}"] = acc.get(f"loss_{name}", 0.0) + float(per_row[m].detach().sum())
                    counts[f"loss_{name}"] = counts.get(f"loss_{name}", 0.0) + float(m.sum())
        for k, v in {"loss": last_loss, **pdiag, **tdiag, **ldiag}.items():
            acc[k] = acc.get(k, 0.0) + v
            counts.setdefault(k, 0.0)
            counts[k] += 0.0 if k.startswith("loss_") else 1.0
        bar.update(1)
        done = step + 1
        if done % cfg.run.log_every == 0 or done == cfg.run.steps:
            now = time.perf_counter()
            n_steps = max(1, int(counts["loss"]))
            elapsed += now - t_tick
            metrics = {k: acc[k] / max(counts[k], 1e-12) for k in acc}
            metrics.update(sec_per_step=(now - t_tick) / n_steps, lr=_lr(cfg, step), peak_mem_mb=peak_memory_mb(device),
                           wall_time_s=elapsed)
            t_tick = now
            with open(stats_path, "a") as fh:
                fh.write(json.dumps({"step": done, "time": time.time(), **metrics}) + "\n")
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            emit("metrics", {"step": done, "metrics": metrics})
            acc, counts = {}, {}
        if done % cfg.run.checkpoint_every == 0 or done == cfg.run.steps:
            path = _save(state, cfg, run_dir, done, pairs, elapsed + time.perf_counter() - t_tick)
            emit("checkpoint", {"step": done, "path": str(path)})
        if evaluator and cfg.eval.every_steps and done % cfg.eval.every_steps == 0 and done != cfg.run.steps:
            rows_e, metrics_e = evaluator(nets, cfg, data, done, run_dir)
            emit("eval", {"step": done, "rows": rows_e, "metrics": metrics_e})
    bar.close()
    if start == cfg.run.steps == 0:
        _save(state, cfg, run_dir, 0, pairs, elapsed)
    eval_metrics: dict[str, float] = {}
    if evaluator and cfg.eval.at_end:
        rows_e, eval_metrics = evaluator(nets, cfg, data, cfg.run.steps, run_dir)
        emit("eval", {"step": cfg.run.steps, "rows": rows_e, "metrics": eval_metrics})
    summary = {"run_id": run_id(cfg), "steps": cfg.run.steps, "final_loss": last_loss, "wall_time_s": elapsed,
               "peak_mem_mb": peak_memory_mb(device), "params": count_params(state.model), "device": str(device),
               "resumed_from": start, "metrics": eval_metrics}
    ckpt.write_text_atomic(summary_path, json.dumps(summary, indent=2))
    emit("done", {"step": cfg.run.steps, "summary": summary})
    return summary


def load_run(path: str | Path, device: str | torch.device = "cpu") -> tuple[Config, dict, Dataset, int]:
    """(cfg, nets, data, step) from a run directory (its newest checkpoint) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        found = ckpt.latest_checkpoint(p)
        if found is None:
            raise ConfigError(f"{p}: no checkpoint found (expected {p}/checkpoints/ckpt-XXXXXXXX.pt)")
        p = found
    elif not p.is_file():
        raise ConfigError(f"{p}: no such run directory or checkpoint file")
    sd = ckpt.load(p, map_location=device)
    cfg = from_dict(yaml.safe_load(sd["config"]))
    data = load_dataset(cfg.data)
    state = State(cfg, data, torch.device(device))
    state.load_state_dict(sd)
    state.model.eval()
    return cfg, state.nets(), data, int(sd["step"])


def config_from_args(args: argparse.Namespace) -> Config:
    """Resolve --preset, --config files and key=value overrides."""
    return resolve(args.preset, args.config or [], args.overrides)


def add_config_args(ap: argparse.ArgumentParser) -> None:
    """The config options shared by train-like commands."""
    ap.add_argument("--preset", default=DEFAULT_PRESET, help=f"named preset: {', '.join(PRESETS)} (default {DEFAULT_PRESET})")
    ap.add_argument("-c", "--config", action="append", help="YAML delta file(s), applied in order")
    ap.add_argument("overrides", nargs="*", help="dotted overrides key=value, e.g. guidance.mode=intrinsic")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ism train", description="Train one run; rerunning the same command resumes it.")
    add_config_args(ap)
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and run id, then exit")
    ap.add_argument("--run-dir", default=None, help="run directory (default run.out_dir/RUN_ID)")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.run.out_dir) / run_id(cfg)
    if args.dry_run:
        print(f"# run id {run_id(cfg)}  ->  {run_dir}")
        print(dump_yaml(cfg), end="")
        return 0
    evaluator = None
    if not args.no_eval and cfg.eval.at_end:
        from ism.evaluate import make_evaluator
        evaluator = make_evaluator(cfg)
    print(f"run {run_id(cfg)} -> {run_dir}", file=sys.stderr)
    try:
        summary = train(cfg, run_dir, evaluator=evaluator)
    except Diverged as e:
        print(f"ism train: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"} | {"metrics": summary["metrics"]}, indent=2))
    return 0 if math.isfinite(summary["final_loss"]) or cfg.run.steps == 0 else 1
