"""Accounting for the machine: where a trial's wall time goes (training, evaluation, reporting, overhead), how busy
it kept the CPU cores, and a sweep's totals against the ideal of every core busy for the whole sweep.

A trial's phases nest (evaluation and the MLflow logging of the callbacks happen inside training): the clock charges
each interval to the innermost open phase, so the phases add up to the trial's wall time. CPU time is the process's
(time.process_time: all threads, user + system), so the sOT prefetch thread and torch's intra-op threads count.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping

PHASES = ("train", "eval", "report", "overhead")  # overhead: whatever runs outside the other three
PREFIX = "machine/"  # MLflow metric prefix: the UI groups them in one chart section


class PhaseClock:
    """Wall and process-CPU seconds per phase of one trial; time outside every phase is overhead."""

    def __init__(self, cores: int | None = None):
        self.cores = cores or os.cpu_count() or 1
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self._open = ["overhead"]
        self._t, self._c = time.perf_counter(), time.process_time()

    def _charge(self) -> None:
        """Charge the time since the last switch to the innermost open phase."""
        t, c = time.perf_counter(), time.process_time()
        self.wall[self._open[-1]] += t - self._t
        self.cpu[self._open[-1]] += c - self._c
        self._t, self._c = t, c

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the block's time to phase `name` (minus any phase opened inside it)."""
        if name not in PHASES:
            raise ValueError(f"PhaseClock.phase: {name!r} is not one of {PHASES}")
        self._charge()
        self._open.append(name)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    def metrics(self) -> dict[str, float]:
        """machine/<phase>_s, machine/wall_s, machine/cpu_s, machine/cpu_util (CPU / wall / cores) and per phase
        machine/<phase>_cpu_util, machine/cores; the time up to now counts."""
        self._charge()
        wall, cpu = sum(self.wall.values()), sum(self.cpu.values())
        out = {f"{PREFIX}{p}_s": self.wall[p] for p in PHASES}
        out.update({f"{PREFIX}{p}_cpu_util": utilisation(self.cpu[p], self.wall[p], self.cores) for p in PHASES})
        out.update({f"{PREFIX}wall_s": wall, f"{PREFIX}cpu_s": cpu, f"{PREFIX}cores": float(self.cores),
                    f"{PREFIX}cpu_util": utilisation(cpu, wall, self.cores)})
        return out


def utilisation(cpu_s: float, wall_s: float, cores: int | float) -> float:
    """Share of `cores` cores kept busy: CPU seconds / (wall seconds x cores); 0 for no time."""
    return cpu_s / (wall_s * cores) if wall_s > 0 and cores > 0 else 0.0


def sweep_totals(trials: Iterable[Mapping[str, float]], span_s: float, cores: int | None = None) -> dict[str, float]:
    """A sweep's machine account from its trials' PhaseClock metrics: the phase sums, CPU seconds, and the
    utilisation of the machine's cores over the sweep's wall span (the ideal is 1: every core busy throughout).
    `idle_core_s` is what the ideal would have had in addition: span x cores - CPU seconds."""
    cores = cores or os.cpu_count() or 1
    ms = [m for m in trials if f"{PREFIX}wall_s" in m]
    out = {f"{PREFIX}{p}_s": sum(m.get(f"{PREFIX}{p}_s", 0.0) for m in ms) for p in PHASES}
    cpu = sum(m[f"{PREFIX}cpu_s"] for m in ms)
    out.update({f"{PREFIX}trials": float(len(ms)), f"{PREFIX}trial_wall_s": sum(m[f"{PREFIX}wall_s"] for m in ms),
                f"{PREFIX}cpu_s": cpu, f"{PREFIX}span_s": span_s, f"{PREFIX}cores": float(cores),
                f"{PREFIX}cpu_util": utilisation(cpu, span_s, cores),
                f"{PREFIX}idle_core_s": max(0.0, span_s * cores - cpu)})
    return out


def describe(totals: Mapping[str, float]) -> str:
    """One line for the sweep's closing message."""
    g = lambda k: totals.get(PREFIX + k, 0.0)  # noqa: E731
    if not g("trials"):  # an interrupted wave: its busy cores belong to trials that log their account at their end
        return (f"machine: no trial finished in these {g('span_s') / 60:.1f} min; unfinished trials are accounted "
                "when they finish")
    phases = ", ".join(f"{p} {g(p + '_s') / 60:.1f}" for p in PHASES)
    return (f"machine: {int(g('trials'))} trial(s) in {g('span_s') / 60:.1f} min wall on {int(g('cores'))} cores; "
            f"trial minutes {phases}; CPU {g('cpu_s') / 60:.1f} min = {100 * g('cpu_util'):.0f} % of all cores "
            f"busy throughout (idle {g('idle_core_s') / 60:.1f} core-min)")
