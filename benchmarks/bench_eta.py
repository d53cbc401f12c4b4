"""The dry run's cost against the real one: a small smoke sweep (two variants of ablations/ema.yaml, one seed) run by
`ism ablate` in a fresh storage and MLflow store. Figures: the dry run's wall estimate from the cost model alone, the
sweep's real wall, the trials' measured / estimated seconds (what <storage>/timings.json keeps), and the dry run's
estimate once calibrated by those timings. Goal: the calibrated estimate within 2x of the real wall.
`python -m benchmarks.bench_eta` (also part of `make bench`); on a shared machine the neighbours' load enters every
figure.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC, PROFILE, VARIANTS = "ablations/ema.yaml", "smoke", "none,paper"


def _ablate(storage: Path, uri: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ism.cli", "ablate", str(ROOT / SPEC), "--profile", PROFILE,
                           "--variants", VARIANTS, "--seeds", "0", "--storage", str(storage), "--tracking-uri", uri,
                           *extra], capture_output=True, text=True, cwd=storage.parent, timeout=3600)


def _wall_s(dry_run: str) -> float:
    """The '~Xs wall' (or m, h) of a dry run's cost line, in seconds."""
    num, unit = re.search(r"~([\d.]+)([smh]) wall", dry_run).groups()
    return float(num) * {"s": 1, "m": 60, "h": 3600}[unit]


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="ism-bench-eta-") as tmp:
        storage, uri = Path(tmp) / "st", f"sqlite:///{tmp}/mlruns/mlflow.db"
        model = _ablate(storage, uri, "--dry-run")
        assert model.returncode == 0, model.stderr
        t0 = time.perf_counter()
        done = _ablate(storage, uri)
        wall = time.perf_counter() - t0
        assert done.returncode == 0, done.stderr[-3000:]
        timings = json.loads((storage / "timings.json").read_text())[PROFILE]
        # the dry run of the same trials on a machine that timed them: a fresh storage holding only the timings
        fresh = Path(tmp) / "fresh"
        fresh.mkdir()
        shutil.copy2(storage / "timings.json", fresh / "timings.json")
        calibrated = _ablate(fresh, uri, "--dry-run")
        scale = timings["measured_s"] / timings["estimated_s"]
        est_model, est_calibrated = _wall_s(model.stdout), _wall_s(calibrated.stdout)
        rows = [
            {"case": "smoke dry run, cost model only", "value": round(est_model, 1), "unit": "s wall",
             "note": f"{SPEC} --variants {VARIANTS} --seeds 0"},
            {"case": "smoke sweep, real", "value": round(wall, 1), "unit": "s wall",
             "note": "ism ablate from start to exit: Ray start, trials, MLflow"},
            {"case": "smoke trials, measured / estimated", "value": round(scale, 2), "unit": "x",
             "note": f"{timings['trials']} trials: {timings['measured_s']:.0f} s measured, "
                     f"{timings['estimated_s']:.0f} s estimated"},
            {"case": "smoke dry run, cost model only, / real", "value": round(est_model / wall, 2), "unit": "x",
             "goal": "0.5-2", "note": "the profile's rates as committed"},
            {"case": "smoke dry run, calibrated, / real", "value": round(est_calibrated / wall, 2), "unit": "x",
             "goal": "0.5-2", "note": f"{est_calibrated:.0f} s: the rates x {scale:.2f} from timings.json"},
        ]
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
