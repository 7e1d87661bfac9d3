"""A run that fails while the tracking store is down: marking its MLflow run FAILED gets
one quick try, a one-line warning, and the error that ended the run reaches the caller
unchanged. The "store" is a real HTTP server that answers every request with 503, the
status MLflow's client otherwise retries with backoff for minutes."""

from __future__ import annotations

import logging

import pytest

from pdml_ray.service.train import driver
from tests.helpers import UnavailableStore, tiny_config


@pytest.fixture
def store_down():
    with UnavailableStore() as store:
        yield store, store.uri


def driver_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == driver.log.name and r.levelno == logging.WARNING]


def test_marking_failed_on_a_store_that_is_down_warns_once_after_one_try(store_down, caplog):
    server, uri = store_down
    with caplog.at_level(logging.WARNING, logger=driver.log.name):
        driver._mark_failed(uri, "run-1")  # returns: the caller re-raises its own error
    (warning,) = driver_warnings(caplog)
    assert warning.startswith(f"could not mark MLflow run run-1 as FAILED in {uri}: ")
    assert "\n" not in warning
    assert len(server.requests) == 1, server.requests  # one try, none of MLflow's retries
    assert "run_id=run-1" in server.requests[0]


def test_the_error_that_ended_the_run_gets_through(store_down, caplog, tmp_path, monkeypatch):
    """run_training's failure path with the trainer failing at once and the store gone."""
    server, uri = store_down
    cfg = tiny_config(tmp_path, tmp_path / "synthetic", uri, ray={"run_name": "store-down"})
    for name in ("check_tracking_store", "check_before_training", "prepare_data"):
        monkeypatch.setattr(driver, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(driver, "start_run", lambda *args, **kwargs: "run-2")
    original = RuntimeError("the worker group could not start")

    def failing_trainer(*args, **kwargs):
        raise original

    monkeypatch.setattr(driver, "build_trainer", failing_trainer)
    with caplog.at_level(logging.WARNING, logger=driver.log.name), \
            pytest.raises(RuntimeError) as raised:
        driver.run_training(cfg)
    assert raised.value is original
    (warning,) = driver_warnings(caplog)
    assert warning.startswith(f"could not mark MLflow run run-2 as FAILED in {uri}: ")
    assert len(server.requests) == 1, server.requests
