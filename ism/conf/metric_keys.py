"""The metric-key format `<metric>_steps_N[_w_W]`: written by the evaluator, read by tracking, the progress line,
study objectives and reports. Every reader parses through `parse`."""
from __future__ import annotations

import re
from typing import NamedTuple

_KEY = re.compile(r"^(?P<metric>.+?)_steps_(?P<steps>\d+)(?:_w_(?P<w>[-+0-9.e]+))?$")


class MetricKey(NamedTuple):
    """The parts of a metric key."""
    metric: str
    steps: int
    w: float | None        # the guidance value of a guidance-sweep key, None at the run's own guidance


def key(metric: str, steps: int, w: float | None = None) -> str:
    """fid_steps_4 at the run's guidance; fid_steps_4_w_1.5 for a guidance-sweep value."""
    return f"{metric}_steps_{int(steps)}" + ("" if w is None else f"_w_{w:g}")


def parse(name: str) -> MetricKey | None:
    """The parts of a metric key, or None for any other name (loss, wall_time_s, extractor_accuracy, ...)."""
    m = _KEY.match(name)
    if m is None:
        return None
    return MetricKey(m["metric"], int(m["steps"]), float(m["w"]) if m["w"] is not None else None)
