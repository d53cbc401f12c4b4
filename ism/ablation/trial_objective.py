"""A study's objective: one evaluation metric, or a weighted sum of it over sampling step counts, read from the
metrics a trial's evaluation produces (ism.conf.metric_keys names them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ism.conf import metric_keys
from ism.errors import ConfigError

METRIC = "objective"                 # the value trials report to Tune and log to MLflow


@dataclass(frozen=True)
class Objective:
    """A metric, or a weighted sum of one metric over sampling step counts."""
    terms: Mapping[str, float]       # MLflow/eval metric key -> weight
    metric: str
    steps: tuple[int, ...]
    direction: str                   # minimize | maximize

    def value(self, metrics: Mapping[str, float]) -> float:
        missing = [k for k in self.terms if k not in metrics]
        if missing:
            raise ConfigError(f"objective: the evaluation produced no {', '.join(missing)} (got {', '.join(sorted(metrics))})")
        return float(sum(w * float(metrics[k]) for k, w in self.terms.items()))

    def describe(self) -> str:
        body = " + ".join(f"{w:g}*{k}" for k, w in self.terms.items())
        return f"{self.direction} {body}"

    def label(self) -> str:
        """A short readable name of the objective (Optuna's metric name): fid@1x0.5+4x0.25+128x0.25, or fid@4
        for one step count of weight 1."""
        by_step = {metric_keys.parse(k).steps: w for k, w in self.terms.items()}
        if len(by_step) == 1 and next(iter(by_step.values())) == 1:
            return f"{self.metric}@{next(iter(by_step))}"
        return f"{self.metric}@" + "+".join(f"{s}x{w:g}" for s, w in sorted(by_step.items()))
