"""--export-best: the best trial of a study as a delta config (preset + changed keys) that `ism train -c`,
config.resolve and ablation bases load."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ism.conf.config import ConfigError, diff, from_dict, preset_delta, unflatten
from ism.study.plan import StudyPlan
from ism.system import store
from ism.system.store import atomic_write
from ism.study.storage import open_study


def best_line(p: StudyPlan, url: str) -> str | None:
    """'best trial #7: fid@1x0.5+... = 12.3 with {"wavelet.finest_weight": 4.0}', or None before any completed trial."""
    study = open_study(p, url, create=False, strict=False)
    try:
        best = study.best_trial
    except ValueError:
        return None
    return f"best trial #{best.number}: {p.objective.describe()} = {best.value:.6g} with {json.dumps(p.decode(best.params))}"


def export_best(p: StudyPlan, url: str, out: Path | None = None, root: Path | None = None) -> Path:
    """Write the best trial as a delta config (preset + changed keys) that config.resolve and ablation bases load."""
    study = open_study(p, url, create=False)
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study '{p.study_name}' has no completed trial yet; run it first") from None
    cfg = p.portable_config(best.params)
    preset_cfg = from_dict(preset_delta(p.preset))
    delta = unflatten({k: list(b) if isinstance(b, tuple) else b for k, (_, b) in diff(preset_cfg, cfg).items()})
    if out is None:
        base = Path(root or "runs/study").resolve()
        out = store.under(base, base / "best" / f"{store.check_name('study', p.spec.name)}-{p.profile}.yaml")
    params = p.decode(best.params)
    head = [f"# Best trial #{best.number} of study '{p.study_name}' ({p.spec.path}): {p.objective.describe()} = {best.value:.6g}",
            f"# tuned: {json.dumps(params)}",
            "# Load: ism train -c THIS_FILE (or config.resolve(files=[THIS_FILE])); as an ablation base:",
            f"#   base: {{preset: {p.preset}, overrides: <the sections below>}}"]
    atomic_write(out, "\n".join(head) + "\n" + yaml.safe_dump({"preset": p.preset, **delta}, sort_keys=False))
    return out
