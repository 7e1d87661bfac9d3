"""bench/benchlib.py: the statistics every benchmark's table states."""

from __future__ import annotations

import math
import statistics
import sys

import numpy as np
import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import benchlib  # noqa: E402  (a script folder, not a package)


def test_paired_interval_is_the_t_interval():
    mean, low, high = benchlib.paired_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.302653, half-width 4.302653 / sqrt(3)
    assert mean == 2.0
    assert math.isclose(high - mean, 4.302653 / math.sqrt(3), rel_tol=1e-5)
    assert math.isclose(mean - low, high - mean)


@pytest.mark.parametrize("seed", range(5))
def test_the_interval_is_centred_on_the_mean_with_the_t_half_width(seed):
    differences = list(np.random.default_rng(seed).normal(0.5, 1.0, 6))
    mean, low, high = benchlib.paired_interval(differences)
    assert math.isclose(mean, statistics.mean(differences))
    assert math.isclose(mean - low, high - mean)
    # t(0.975, 5) = 2.570582
    half = 2.570582 * statistics.stdev(differences) / math.sqrt(6)
    assert math.isclose(high - mean, half, rel_tol=1e-5)


def test_one_difference_has_no_interval():
    assert benchlib.paired_interval([0.3]) == (0.3, -math.inf, math.inf)
    assert benchlib.paired_text([0.031], scale=100) == "+3.1 (1 seed)"


def test_paired_text_states_the_mean_and_the_interval_in_points():
    # differences 0.01, 0.02, 0.03: mean +2.0 points, half-width 4.302653 * 1.0 / sqrt(3)
    half = 4.302653 / math.sqrt(3)
    assert benchlib.paired_text([0.01, 0.02, 0.03], scale=100) == (
        f"+2.0 [{2 - half:+.1f}, {2 + half:+.1f}]")
    assert benchlib.paired_text([-0.05, -0.04, -0.06], scale=100).startswith("-5.0 [")
    assert benchlib.paired_text([]) == "n/a"


def test_the_extension_accuracy_is_pooled_over_the_extended_pixels(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("pooled")).info.run_id
    # steps 1-3: 50% of 100 pixels, 90% of 300, and a step without an accuracy
    for step, accuracy, pixels in ((1, 0.5, 100), (2, 0.9, 300), (3, None, 200)):
        if accuracy is not None:
            client.log_metric(run, "ext_accuracy", accuracy, step=step)
        client.log_metric(run, "ext_pixels_per_step", pixels, step=step)
    accuracy, pixels = benchlib.pooled_extension_accuracy(uri, run)
    assert math.isclose(accuracy, (0.5 * 100 + 0.9 * 300) / 400)
    assert math.isclose(pixels, 200.0)  # the mean over every logged step
    empty = client.create_run(client.get_experiment_by_name("pooled").experiment_id).info.run_id
    assert benchlib.pooled_extension_accuracy(uri, empty)[1] == 0.0
