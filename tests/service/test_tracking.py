"""MetricLogger on a real MLflow store: buffering while the server refuses, bounded memory."""

from __future__ import annotations

import logging
import socket

from mlflow.tracking import MlflowClient

from pdml_ray.service.tracking import MetricLogger


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
