"""Formatting shared by the --dry-run listings of `ism ablate` and `ism study`."""
from __future__ import annotations

import json
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
