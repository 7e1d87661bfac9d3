"""MetricLogger on a real MLflow store: buffering while the server refuses, bounded memory."""

from __future__ import annotations

import logging
import os
import socket

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pdml_ray.service.tracking import (RUN_NAME_TAG, MetricLogger, environ_scope, fail_fast_http,
                                       start_run, start_system_metrics, tracking_uri_scope)
from tests.helpers import tiny_config, wait_for


def refused_uri() -> str:
    """An http tracking URI on a local port nothing listens on: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_outage_keeps_the_newest_points_and_says_how_many_were_dropped(mlflow_uri, caplog):
    store = MlflowClient(mlflow_uri)
    run_id = store.create_run(store.create_experiment("tracking")).info.run_id
    logger = MetricLogger(refused_uri(), run_id, max_buffer=5, retry_every_s=0.0)

    with caplog.at_level(logging.WARNING, logger="pdml_ray.service.tracking"):
        for step in range(1, 9):  # 8 steps x 1 point, 5 kept
            logger.log({"loss": float(step)}, step=step)
    assert logger.dropped == 3 and [m.step for m in logger.buffer] == [4, 5, 6, 7, 8]
    messages = [record.getMessage() for record in caplog.records]
    assert sum("unreachable (" in m and "buffering" in m for m in messages) == 1  # said once
    assert any("dropped 1 oldest metric points (3 so far)" in m for m in messages)

    # The server is back (here: the same run in the sqlite store): the buffer goes out
    # in step order and the logger says it recovered.
    logger.client = MlflowClient(mlflow_uri)
    with caplog.at_level(logging.WARNING, logger="pdml_ray.service.tracking"):
        assert logger.flush()
    history = store.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, float(s)) for s in range(4, 9)]
    assert logger.buffer == [] and "reachable again" in caplog.records[-1].getMessage()


def test_retry_waits_retry_every_s_after_a_failure(mlflow_uri):
    logger = MetricLogger(refused_uri(), "no-run", retry_every_s=3600.0)
    attempts = []
    real_flush = logger.flush
    logger.flush = lambda: attempts.append(1) or real_flush()
    for step in range(1, 4):
        logger.log({"loss": 1.0}, step=step)
    assert len(attempts) == 1 and len(logger.buffer) == 3  # one try, then buffered quietly


def test_a_run_says_what_it_is_in_its_name_and_tags(tmp_path, mlflow_uri):
    cfg = tiny_config(tmp_path, tmp_path / "scenes", mlflow_uri,
                      train={"supervision": "point+pdml"}, loss={"mining": "global+store"})
    run = MlflowClient(mlflow_uri).get_run(start_run(cfg, ray_run_name="pdml-run-1"))
    assert run.info.run_name == "point+pdml pdml-run-1"
    assert {key: run.data.tags[key] for key in ("pdml.dataset", "pdml.backbone",
                                                "pdml.supervision", "pdml.mining")} == {
        "pdml.dataset": "synthetic", "pdml.backbone": "resnet18",
        "pdml.supervision": "point+pdml", "pdml.mining": "global+store"}
    assert run.data.tags[RUN_NAME_TAG] == "pdml-run-1"

    point_only = cfg.replace(**{"train.supervision": "point", "ray.run_name": None})
    run = MlflowClient(mlflow_uri).get_run(start_run(point_only, ray_run_name="pdml-run-2"))
    assert run.info.run_name == "point pdml-run-2"
    assert run.data.tags["pdml.mining"] == "none"  # no PDML, no triplets to mine


def test_images_are_logged_by_step_and_a_failure_is_only_a_warning(tmp_path, mlflow_uri,
                                                                   caplog):
    store = MlflowClient(mlflow_uri)
    run_id = store.create_run(store.create_experiment("images")).info.run_id
    logger = MetricLogger(mlflow_uri, run_id)
    picture = np.zeros((6, 9, 3), dtype=np.uint8)
    picture[:, :3] = 255
    for step in (4, 8):
        logger.log_image(picture, key="val_predictions", step=step)
    names = sorted(a.path for a in store.list_artifacts(run_id, "images"))
    pngs = [name for name in names if name.endswith(".png")]
    assert [name.split("+")[:3] for name in pngs] == [["images/val_predictions", "step", "4"],
                                                      ["images/val_predictions", "step", "8"]]
    saved = np.asarray(Image.open(store.download_artifacts(run_id, pngs[0], str(tmp_path))))
    assert np.array_equal(saved[..., :3], picture)

    down = MetricLogger(refused_uri(), run_id)
    with caplog.at_level(logging.WARNING, logger="pdml_ray.service.tracking"):
        down.log_image(picture, key="val_predictions", step=12)
    assert "could not log image val_predictions of step 12" in caplog.records[-1].getMessage()


def test_system_metrics_go_to_the_run(mlflow_uri):
    store = MlflowClient(mlflow_uri)
    run_id = store.create_run(store.create_experiment("system")).info.run_id
    monitor = start_system_metrics(mlflow_uri, run_id, every_s=0.2)
    try:
        wait_for(lambda: store.get_metric_history(run_id, "system/cpu_utilization_percentage"),
                 timeout_s=60, what="system metrics in the run")
    finally:
        monitor.finish()
    metrics = store.get_run(run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        metrics)


def test_environ_scope_puts_back_set_and_unset_variables_even_after_an_error(monkeypatch):
    monkeypatch.setenv("PDML_TEST_SET", "before")
    monkeypatch.delenv("PDML_TEST_UNSET", raising=False)
    with pytest.raises(KeyError):
        with environ_scope({"PDML_TEST_SET": "inside", "PDML_TEST_UNSET": "inside"}):
            assert os.environ["PDML_TEST_SET"] == os.environ["PDML_TEST_UNSET"] == "inside"
            raise KeyError("the block fails")
    assert os.environ["PDML_TEST_SET"] == "before" and "PDML_TEST_UNSET" not in os.environ


def test_fail_fast_http_and_tracking_uri_scope_leave_no_setting_behind(monkeypatch, mlflow_uri,
                                                                       tmp_path):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with fail_fast_http():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    with tracking_uri_scope(mlflow_uri):
        assert mlflow.get_tracking_uri() == mlflow_uri
    assert mlflow.get_tracking_uri() == before and "MLFLOW_TRACKING_URI" not in os.environ

    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    with tracking_uri_scope(mlflow_uri):
        assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_uri
    assert os.environ["MLFLOW_TRACKING_URI"] == other
