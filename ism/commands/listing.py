"""Formatting and hints shared by the commands: --dry-run listings, next-step hints, the reports index."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Mapping


def fmt_resources(r: Mapping[str, float]) -> str:
    """{'cpu': 1.0, 'gpu': 0.5} -> 'cpu 1, gpu 0.5'."""
    return ", ".join(f"{k} {v:g}" for k, v in r.items() if v)


def fmt_s(s: float) -> str:
    """Seconds as s, min or h, whichever reads best."""
    return f"{s:.0f}s" if s < 90 else f"{s / 60:.1f}m" if s < 5400 else f"{s / 3600:.1f}h"


def fmt_v(v: Any) -> str:
    """A config value as typed (lists as JSON)."""
    return json.dumps(list(v)) if isinstance(v, (list, tuple)) else str(v)


def flags(**given: str | int | None) -> str:
    """' --profile smoke --tracking-uri URI' for the options a command was given (None left out), so that a hint
    it prints reaches the same store and sweep when copied; database passwords are masked."""
    from ism.system.dburl import masked
    return "".join(f" --{k.replace('_', '-')} {shlex.quote(masked(str(v)) if '@' in str(v) else str(v))}"
                   for k, v in given.items() if v is not None)


def ui_hint(uri: str, experiment: str, port: int, tracking_flag: str | None = None) -> str:
    """How to look at an experiment: the deep link into MLflow's training view (after `ism ui` for a local store);
    tracking_flag: the command's --tracking-uri, passed on to `ism ui`."""
    from ism import tracking  # mlflow loads only when a command has tracked something
    ids = {name: eid for eid, name in tracking.ism_experiments(uri)}
    if experiment not in ids:
        return ""
    if uri.startswith(("http://", "https://")):
        return f"  browse:  {tracking.ui_link(uri, ids[experiment])}"
    port_arg = ("" if port == 5000 else f" --port {port}") + flags(tracking_uri=tracking_flag)
    return (f"  browse:  ism ui{port_arg}, then {tracking.ui_link(f'http://127.0.0.1:{port}', ids[experiment])}")


def update_index(report_md: Path) -> None:
    """Rebuild reports/README.md when the report was written under ./reports (not for --out elsewhere, nor for another
    profile's git-ignored folder: those never touch tracked files)."""
    from ism.report.index import other_profile, write_index
    root = (Path.cwd() / "reports").resolve()
    if root in Path(report_md).resolve().parents and not other_profile(Path(report_md).parent):
        print(f"index: {write_index(root)}")
