"""The phase clock that splits a run's wall time, on a scripted clock (no real timing)."""

import itertools

import pytest

from pdml_ray.service.train import phases
from pdml_ray.service.train.driver import _phase_seconds
from pdml_ray.service.train.phases import PhaseClock, phase_metric, summary_line


@pytest.fixture
def scripted_clock(monkeypatch):
    """time.perf_counter returns the next of the values the test gives, in order."""
    def script(*values):
        it = iter(values)
        monkeypatch.setattr(phases.time, "perf_counter", lambda: next(it))
    return script


def test_nested_phases_are_exclusive(scripted_clock):
    # steps 0..10, inside it logging 3..5 and again 7..8: steps own 10 - 2 - 1 = 7 s
    scripted_clock(0.0, 3.0, 5.0, 7.0, 8.0, 10.0)
    clock = PhaseClock()
    with clock("steps"):
        with clock("logging"):
            pass
        with clock("logging"):
            pass
    assert clock.seconds == {"steps": 7.0, "logging": 3.0}
    assert clock.metrics() == {"time/steps_s": 7.0, "time/logging_s": 3.0}


def test_phases_accumulate_and_sum_to_the_time_spent(scripted_clock):
    # in-block durations 1.5, 0.25, 1.0, 0.75; gaps between blocks 2.0, 4.0, 3.0
    ticks = list(itertools.accumulate([0.5, 1.5, 2.0, 0.25, 4.0, 1.0, 3.0, 0.75]))
    scripted_clock(*ticks)
    clock = PhaseClock()
    for phase in ("steps", "evaluation", "steps", "checkpointing"):
        with clock(phase):
            pass
    # each block lasts the gap between its two ticks
    assert clock.seconds == {"steps": 1.5 + 1.0, "evaluation": 0.25, "checkpointing": 0.75}
    # the gaps between blocks belong to no phase
    assert sum(clock.seconds.values()) == ticks[-1] - ticks[0] - (2.0 + 4.0 + 3.0)


def test_a_phase_that_raises_is_still_counted(scripted_clock):
    scripted_clock(1.0, 4.0)
    clock = PhaseClock()
    with pytest.raises(ValueError):
        with clock("evaluation"):
            raise ValueError
    assert clock.seconds == {"evaluation": 3.0}


def test_summary_line_in_run_order_with_shares():
    line = summary_line({"registration": 5.0, "steps": 90.0, "startup": 5.0})
    assert line == "start-up 5 s (5%) · steps 90 s (90%) · registration 5 s (5%)"


def test_driver_phase_seconds_from_the_last_report():
    report = {"val_miou": 0.3, "first_step_unix": 1_000.0, phase_metric("steps"): 60.0,
              phase_metric("evaluation"): 4.0}
    seconds = _phase_seconds(report, started_at=990.5, registration_s=2.5)
    assert seconds == {"steps": 60.0, "evaluation": 4.0, "startup": 9.5, "registration": 2.5}
