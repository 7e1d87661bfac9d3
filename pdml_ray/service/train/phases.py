"""Where a run's wall time goes: start-up, optimizer steps, evaluation, checkpoints,
logging and registration.

A worker and the driver each keep a :class:`PhaseClock`; nested phases are exclusive
(the metrics a step logs count as logging, not as the step), so the phases of one
process add up to the time it spent in them. The run's totals go to MLflow as
``time/<phase>_s`` metrics, and a job prints them as one line at the end.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator, Mapping

# In the order a run passes through them; "startup" is from the command (or from
# run_training when no command start is known) to the first optimizer step.
PHASES = ("startup", "steps", "evaluation", "checkpointing", "logging", "registration")


class PhaseClock:
    """Accumulates seconds per phase. ``with clock("steps"): ... with clock("logging"):``
    counts the inner block as logging only: the innermost open phase owns the time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: list[str] = []
        self._since = 0.0

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        now = time.perf_counter()
        if self._open:
            self.seconds[self._open[-1]] += now - self._since
        self._open.append(phase)
        self._since = now
        try:
            yield
        finally:
            now = time.perf_counter()
            self.seconds[self._open.pop()] += now - self._since
            self._since = now

    def metrics(self) -> dict[str, float]:
        """``{"time/steps_s": 604.1, ...}`` for MLflow."""
        return {phase_metric(phase): seconds for phase, seconds in self.seconds.items()}


def phase_metric(phase: str) -> str:
    return f"time/{phase}_s"


def summary_line(seconds: Mapping[str, float]) -> str:
    """``"start-up 14 s · steps 604 s (91%) · ..."``: the phases present, in run order, each
    with its share of their sum."""
    total = sum(seconds.get(phase, 0.0) for phase in PHASES)
    parts = []
    for phase in PHASES:
        if phase in seconds:
            share = f" ({100 * seconds[phase] / total:.0f}%)" if total > 0 else ""
            parts.append(f"{phase.replace('startup', 'start-up')} {seconds[phase]:.0f} s{share}")
    return " · ".join(parts)
