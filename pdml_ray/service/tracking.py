"""MLflow tracking: experiment and run set-up on the driver, metric logging on rank 0.

The driver creates (or, for a reused Ray run name, finds again) one MLflow run and
passes its id to the workers, so a restarted worker group keeps logging into the same
run instead of opening a duplicate. Rank 0 logs through :class:`MetricLogger`, which
fails fast, buffers metrics while the tracking store is unreachable and re-sends them
later, so a transient outage does not stop training; what it finally has to drop, it says.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from pdml_ray.config import Config, dump_config

log = logging.getLogger(__name__)

RUN_NAME_TAG = "pdml.ray_run_name"
PARENT_TAG = "mlflow.parentRunId"


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking store cannot be reached; the message names the URI."""


def check_tracking_store(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any worker starts, when the tracking store is unreachable.

    A tracking server is asked for ``/health`` once, with a short timeout, not through
    MLflow's client, whose retries with backoff take minutes to give up.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
                if response.status != 200:
                    raise TrackingUnavailable(f"MLflow tracking server {uri} answered "
                                              f"HTTP {response.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable: {exc}. "
                                      "Check MLFLOW_TRACKING_URI / mlflow.tracking_uri.") from None
        return
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingUnavailable(f"MLflow store {uri}: cannot create {folder}: {exc}") from None
        if not os.access(folder, os.W_OK):
            raise TrackingUnavailable(f"MLflow store {uri}: folder {folder} is not writable")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingUnavailable(f"MLflow tracking store {uri} is unusable: {exc}") from None


# MLflow's HTTP client retries a failed request 7 times with exponential backoff and
# waits up to 120 s for an answer: minutes before it gives up. On rank 0 that would stall
# every worker at the next collective, so the metric logger fails at once instead and
# re-sends its buffer later. MLflow reads these variables on every request.
FAIL_FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
_http_env_lock = threading.Lock()


@contextmanager
def environ_scope(values: Mapping[str, str]) -> Iterator[None]:
    """Environment variables set to ``values`` for a block (MLflow reads its settings
    from the environment), then put back as they were: unset ones unset again."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def fail_fast_http() -> Iterator[None]:
    """MLflow HTTP requests made in this block get one try and a 5 s timeout."""
    with _http_env_lock, environ_scope(FAIL_FAST_HTTP):
        yield


@contextmanager
def tracking_uri_scope(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for a block, then put things back.

    ``mlflow.set_tracking_uri`` also sets MLFLOW_TRACKING_URI for the whole process;
    left in place, it would redirect every later run of a long-lived process (a Tune
    trial, a notebook, a test session) to this store.
    """
    previous = mlflow.get_tracking_uri()
    with environ_scope({"MLFLOW_TRACKING_URI": uri}):
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


def _param_value(value: Any) -> str:
    return "None" if value is None else str(value)


def find_run(cfg: Config, ray_run_name: str) -> str | None:
    """The MLflow run of an earlier Ray run (or sweep) of this name, if there is one."""
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        return None
    found = client.search_runs([experiment.experiment_id], max_results=1,
                               filter_string=f"tags.`{RUN_NAME_TAG}` = '{ray_run_name}'")
    return found[0].info.run_id if found else None


def run_tags(cfg: Config) -> dict[str, str]:
    """What a run is, at a glance in the runs table: dataset, backbone, supervision mode
    and where PDML triplets are mined (``none`` without PDML)."""
    return {"pdml.dataset": cfg.data.dataset, "pdml.backbone": cfg.model.backbone,
            "pdml.supervision": cfg.train.supervision,
            "pdml.mining": cfg.loss.mining if cfg.uses_pdml else "none"}


def mlflow_run_name(cfg: Config, ray_run_name: str) -> str:
    """``point+pdml+ext pdml-20250101-120000-ab12``: the supervision mode first, so runs
    of different modes tell apart in the UI's run list and chart legends."""
    return f"{cfg.train.supervision} {ray_run_name}"


def metric_key(name: str) -> str:
    """A class name as an MLflow metric key: MLflow allows letters, digits and ``_-. /``."""
    return re.sub(r"[^0-9A-Za-z_\-. /]+", "_", name).strip() or "_"


def start_run(cfg: Config, *, ray_run_name: str, parent_run_id: str | None = None,
              tags: Mapping[str, str] | None = None) -> str:
    """The MLflow run for this Ray run: reused when the name was seen before (resume)."""
    client = MlflowClient(cfg.mlflow.tracking_uri)
    exp_id = experiment_id(client, cfg.mlflow.experiment, cfg.mlflow.artifact_location)
    run_id = find_run(cfg, ray_run_name)
    if run_id is not None:
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        log.info("resuming MLflow run %s for Ray run %s", run_id, ray_run_name)
        return run_id
    all_tags = {RUN_NAME_TAG: ray_run_name, **run_tags(cfg), **(tags or {})}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client.create_run(exp_id, run_name=mlflow_run_name(cfg, ray_run_name), tags=all_tags)
    # The values the run trains with: defaults that depend on another section resolved.
    params = [Param(key, _param_value(value)) for key, value in cfg.resolved().flat().items()]
    for start in range(0, len(params), 100):  # log_batch takes at most 100 params
        client.log_batch(run.info.run_id, params=params[start:start + 100])
    # The whole config as the file that reproduces the run (`jobs.train --config`).
    client.log_text(run.info.run_id, dump_config(cfg), "config.yaml")
    return run.info.run_id


def end_run(uri: str, run_id: str, *, failed: bool = False, killed: bool = False) -> None:
    status = (RunStatus.KILLED if killed else RunStatus.FAILED) if failed else RunStatus.FINISHED
    MlflowClient(uri).set_terminated(run_id, status=RunStatus.to_string(status))


class MetricLogger:
    """Logs metric dicts to one MLflow run, buffering and retrying while it is unreachable.

    Each request gets one try with a short timeout (:func:`fail_fast_http`); after a
    failure the buffer is re-sent on the first :meth:`log` call at least ``retry_every_s``
    later (or on an explicit :meth:`flush`), so a server that hangs instead of refusing
    costs one timeout per ``retry_every_s``, not one per step. At most ``max_buffer``
    metric points wait; beyond that the oldest are dropped with a warning that says how
    many, so memory stays bounded on a long outage.
    """

    def __init__(self, uri: str, run_id: str, *, max_buffer: int = 100_000,
                 retry_every_s: float = 10.0):
        self.client = MlflowClient(uri)
        self.uri, self.run_id, self.max_buffer = uri, run_id, max_buffer
        self.retry_every_s = retry_every_s
        self.buffer: list[Metric] = []
        self.dropped = 0
        self.failing_since: float | None = None
        self.next_attempt = 0.0  # time.monotonic() before which log() does not retry

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.buffer.extend(Metric(key, float(value), now, step) for key, value in metrics.items())
        overflow = len(self.buffer) - self.max_buffer
        if overflow > 0:
            self.buffer = self.buffer[overflow:]
            self.dropped += overflow
            log.warning("MLflow %s unreachable: dropped %d oldest metric points (%d so far)",
                        self.uri, overflow, self.dropped)
        if time.monotonic() >= self.next_attempt:
            self.flush()

    def flush(self) -> bool:
        """Send what is buffered now; False (and the buffer kept) when the store is down."""
        pending = len(self.buffer)
        while self.buffer:
            chunk = self.buffer[:1000]  # log_batch takes at most 1000 metrics
            try:
                with fail_fast_http():
                    self.client.log_batch(self.run_id, metrics=chunk)
            except Exception as exc:
                self.next_attempt = time.monotonic() + self.retry_every_s
                if self.failing_since is None:
                    self.failing_since = time.time()
                    log.warning("MLflow %s unreachable (%s); buffering %d metric points and "
                                "retrying every %.0f s", self.uri, type(exc).__name__,
                                len(self.buffer), self.retry_every_s)
                return False
            del self.buffer[:len(chunk)]
        if self.failing_since is not None:
            log.warning("MLflow %s reachable again after %.0f s; %d buffered metric points sent",
                        self.uri, time.time() - self.failing_since, pending)
            self.failing_since = None
        return True

    def log_image(self, image, key: str, step: int) -> None:
        """An image MLflow shows by step (the run's Artifacts tab, ``images/``, and its
        image charts); a failure is a warning, not the end of training."""
        try:
            with fail_fast_http():
                self.client.log_image(self.run_id, image, key=key, step=step, synchronous=True)
        except Exception as exc:
            log.warning("could not log image %s of step %d to MLflow: %s", key, step, exc)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """The file ``local_path`` into the run's artifacts, below ``artifact_path``; one
        fast try, and an error the caller handles (it knows what the lost file costs)."""
        with fail_fast_http():
            self.client.log_artifact(self.run_id, local_path, artifact_path)

    def log_artifact_text(self, text: str, artifact_file: str) -> None:
        try:
            with fail_fast_http():
                self.client.log_text(self.run_id, text, artifact_file)
        except Exception as exc:
            log.warning("could not log artifact %s to MLflow: %s", artifact_file, exc)


def start_system_metrics(uri: str, run_id: str, *, every_s: float = 10.0):
    """MLflow's system-metrics monitor (CPU, memory, disk, network; GPU where pynvml
    finds one) on this process's node, logging as ``system/...`` into ``run_id`` every
    ``every_s`` seconds until its ``finish()``; a resumed run continues its steps.
    None, with a warning, when the store cannot be reached now: training goes on."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    try:
        with fail_fast_http():
            monitor = SystemMetricsMonitor(run_id, sampling_interval=every_s,
                                           resume_logging=True, tracking_uri=uri)
    except Exception as exc:
        log.warning("system metrics not logged: %s", exc)
        return None
    monitor.start()
    return monitor
