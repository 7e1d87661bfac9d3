"""Checks made before a job starts work it could never finish.

A run that asks for more workers than the cluster can ever hold would wait for Ray
forever; a resumed run with other settings would continue under the old run's name and
MLflow params; a read-only command pointed at a missing sqlite file would create an
empty store and then report that nothing is registered. Each is refused here in seconds
with one line that names what to change.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import ray
from ray._private import state as ray_state  # as Ray Train reads the autoscaler's maximum
from mlflow.tracking import MlflowClient

from pdml_ray.config import Config, ConfigError, dump_config, load_config
from pdml_ray.service.tracking import TrackingUnavailable, check_tracking_store, find_run

log = logging.getLogger(__name__)

SCHEDULE_TIMEOUT_ENV = "PDML_SCHEDULE_TIMEOUT_S"
DEFAULT_SCHEDULE_TIMEOUT_S = 600.0
POLL_S = 5.0


class ClusterTooSmall(ConfigError):
    """The requested workers can never be scheduled on this cluster; names both figures."""


def check_before_training(cfg: Config) -> None:
    """What ``run_training`` checks once the tracking store answers: a resume asks for the
    settings its run started with, and the cluster can hold the workers."""
    check_same_run(cfg)
    check_schedulable(cfg)


# -- resources -------------------------------------------------------------------------
def requested_resources(cfg: Config) -> dict[str, float]:
    """What the Train workers of one run hold together: ``{"CPU": ..., "GPU": ...}``."""
    need = {"CPU": cfg.ray.num_workers * cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        need["GPU"] = float(cfg.ray.num_workers)
    return need


def worker_bundle(cfg: Config) -> dict[str, float]:
    """What one Train worker holds, all of it on one node: ``{"CPU": ..., "GPU": 1}``."""
    return {"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1.0} if cfg.ray.use_gpu else {})}


def workers_that_fit(nodes: Sequence[Mapping[str, float]], bundle: Mapping[str, float]) -> int:
    """How many workers of ``bundle`` the ``nodes`` (each node's resources) hold at most,
    a worker's resources all on one node: per node, the fewest of its resources divided
    by what a worker asks of each, rounded down; summed over the nodes."""
    def on_node(node: Mapping[str, float]) -> int:
        counts = [math.floor(node.get(key, 0.0) / amount + 1e-9)
                  for key, amount in bundle.items() if amount > 0]
        return min(counts) if counts else 0

    return sum(on_node(node) for node in nodes)


def cluster_total(nodes: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each resource summed over the nodes (what ``ray.cluster_resources()`` says)."""
    total: dict[str, float] = {}
    for node in nodes:
        for key, amount in node.items():
            total[key] = total.get(key, 0.0) + amount
    return total


def alive_nodes() -> list[dict[str, float]]:
    """The total resources of each alive node of the connected Ray cluster."""
    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def _shortfall(cfg: Config, have: Mapping[str, float], where: str) -> str | None:
    need = requested_resources(cfg)
    workers = cfg.ray.num_workers
    if need["CPU"] > have.get("CPU", 0.0):
        return (f"ray.num_workers x ray.cpus_per_worker: the run asks for {workers} workers x "
                f"{cfg.ray.cpus_per_worker:g} CPU = {need['CPU']:g} CPUs, but {where} "
                f"{have.get('CPU', 0.0):g} CPUs; lower ray.num_workers or ray.cpus_per_worker "
                "(and train.batch_size with it), or use a bigger cluster")
    if need.get("GPU", 0.0) > have.get("GPU", 0.0):
        return (f"ray.num_workers with ray.use_gpu: the run asks for {workers} workers x 1 GPU "
                f"= {need['GPU']:g} GPUs, but {where} {have.get('GPU', 0.0):g} GPUs; lower "
                "ray.num_workers, or use a cluster with more GPUs")
    return None


def _node_shortfall(cfg: Config, nodes: Sequence[Mapping[str, float]], where: str
                    ) -> str | None:
    """The cluster's totals first; then whether the workers fit node by node (a worker's
    CPUs and GPU are on one node: two 3-CPU nodes hold no 4-CPU worker)."""
    problem = _shortfall(cfg, cluster_total(nodes), f"{where} has")
    if problem:
        return problem
    bundle = worker_bundle(cfg)
    fit = workers_that_fit(nodes, bundle)
    if fit >= cfg.ray.num_workers:
        return None
    if cfg.ray.use_gpu:
        held = "CPUs and GPU"
        sizes = ", ".join(f"{node.get('CPU', 0.0):g} CPUs {node.get('GPU', 0.0):g} GPUs"
                          for node in nodes)
    else:
        held = "CPUs"
        sizes = ", ".join(f"{node.get('CPU', 0.0):g}" for node in nodes) + " CPUs"
    return (f"ray.num_workers x ray.cpus_per_worker: the run asks for {cfg.ray.num_workers} "
            f"workers x {bundle['CPU']:g} CPU, and a worker's {held} must be on one node, but "
            f"{where} has {len(nodes)} node(s) of {sizes}, which hold {fit} such worker(s); "
            "lower ray.cpus_per_worker or ray.num_workers (and train.batch_size with it), or "
            "use bigger nodes")


def autoscaler_maximum() -> dict[str, float] | None:
    """The most resources the autoscaler may bring up (from the cluster config the
    autoscaler publishes), or None for a fixed cluster (a local Ray, `ray start` by hand)."""
    maximum = ray_state.state.get_max_resources_from_cluster_config()
    return {key: float(value) for key, value in maximum.items()} if maximum else None


def schedule_timeout_s() -> float:
    text = os.environ.get(SCHEDULE_TIMEOUT_ENV, "")
    try:
        value = float(text) if text.strip() else DEFAULT_SCHEDULE_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{SCHEDULE_TIMEOUT_ENV}: expected a number of seconds >= 0, "
                          f"got {text!r}")
    return value


def check_schedulable(cfg: Config, *,
                      nodes: Callable[[], Sequence[Mapping[str, float]]] | None = None,
                      maximum: Mapping[str, float] | None | bool = False,
                      timeout_s: float | None = None, poll_s: float = POLL_S,
                      sleep: Callable[[float], None] = time.sleep) -> None:
    """Raise :class:`ClusterTooSmall` unless the cluster can hold the run's workers.

    On a fixed cluster the nodes are compared at once: the cluster's totals, then node by
    node, since each worker's CPUs (and GPU) are on one node. An autoscaling cluster is
    refused at once when even its maximum (a total over the node types) is too small;
    otherwise its nodes are asked for and awaited for up to $PDML_SCHEDULE_TIMEOUT_S
    (default 600 s). ``nodes`` (each alive node's resources), ``maximum`` (False: read
    from Ray) and ``sleep`` are for tests.
    """
    nodes = nodes or alive_nodes
    if maximum is False:
        maximum = autoscaler_maximum()
    if maximum is None:
        problem = _node_shortfall(cfg, nodes(), "the Ray cluster (fixed size, no autoscaler)")
        if problem:
            raise ClusterTooSmall(problem)
        return
    problem = _shortfall(cfg, maximum, "the autoscaler can bring up at most")
    if problem:
        raise ClusterTooSmall(problem)
    if _node_shortfall(cfg, nodes(), "") is None:
        return
    timeout_s = schedule_timeout_s() if timeout_s is None else timeout_s
    _request_nodes(cfg)
    log.info("waiting up to %.0f s for the autoscaler to bring up %s (%s)", timeout_s,
             requested_resources(cfg), SCHEDULE_TIMEOUT_ENV)
    waited = 0.0
    try:
        while True:
            have = nodes()
            if _node_shortfall(cfg, have, "") is None:
                return
            if waited >= timeout_s:
                raise ClusterTooSmall(_node_shortfall(
                    cfg, have, f"after {waited:.0f} s ({SCHEDULE_TIMEOUT_ENV}) the autoscaling "
                               "cluster still"))
            sleep(poll_s)
            waited += poll_s
    finally:
        _request_nodes(None)  # the trainer's placement group is the demand from here on


def _request_nodes(cfg: Config | None) -> None:
    """Ask the autoscaler for the workers' bundles (None: withdraw the request)."""
    from ray.autoscaler.sdk import request_resources

    if cfg is None:
        request_resources(bundles=[])
        return
    request_resources(bundles=[worker_bundle(cfg)] * cfg.ray.num_workers)


# -- resumes ---------------------------------------------------------------------------
# Where a run happens, not what it computes: a run may resume on another cluster.
RESUME_MAY_CHANGE = frozenset({"ray.address"})
# A training run may also be resumed to train for more epochs (from its last checkpoint),
# and under the name it was given when it started without one (the interrupted job's line).
TRAIN_RESUME_MAY_CHANGE = RESUME_MAY_CHANGE | {"train.epochs", "ray.run_name"}


def changed_settings(cfg: Config, run_id: str, *, include_sweep: bool = False,
                     may_change: frozenset[str] = RESUME_MAY_CHANGE) -> list[str] | None:
    """``["train.lr: 0.002 -> 0.01", ...]``: every setting of ``cfg`` that differs from the
    config the MLflow run ``run_id`` started with (its ``config.yaml``); None when the run
    has no such file (a run logged before it was kept: nothing to compare)."""
    client = MlflowClient(cfg.mlflow.tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        try:
            original = load_config(client.download_artifacts(run_id, "config.yaml", folder))
        except Exception as exc:
            log.warning("cannot compare with the config MLflow run %s started with: %s",
                        run_id, exc)
            return None
    return differences(original, cfg, include_sweep=include_sweep, may_change=may_change)


def differences(before: Config, now: Config, *, include_sweep: bool = False,
                may_change: frozenset[str] = RESUME_MAY_CHANGE) -> list[str]:
    """``["train.lr: 0.002 -> 0.01", ...]``: every setting of ``now`` that differs from
    ``before``, but those in ``may_change``."""
    old, new = before.flat(include_sweep=include_sweep), now.flat(include_sweep=include_sweep)
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(new)
            if old.get(key) != new.get(key) and key not in may_change]


# The run's resolved config, kept beside Ray's checkpoints in <storage_path>/<run name>/:
# Ray resumes from that folder whatever MLflow store or experiment the job names now.
RUN_CONFIG_FILE = "pdml_run_config.yaml"


def _run_storage(cfg: Config, run_name: str):
    """``(pyarrow filesystem, path of the run's folder)`` under ``ray.storage_path`` (a
    local folder or a pyarrow URI such as ``s3://bucket/x``), where Ray keeps its
    checkpoints."""
    import pyarrow.fs as pafs

    storage = cfg.ray.storage_path
    if "://" in storage:
        fs, base = pafs.FileSystem.from_uri(storage)
    else:
        fs, base = pafs.LocalFileSystem(), str(Path(storage).resolve())
    return fs, f"{base.rstrip('/')}/{run_name}"


def record_run_config(cfg: Config, run_name: str) -> str:
    """Write ``cfg`` (resolved) into Ray run ``run_name``'s storage folder, beside its
    checkpoints (a temporary name first, then moved); returns the file's path."""
    fs, folder = _run_storage(cfg, run_name)
    fs.create_dir(folder, recursive=True)
    path = f"{folder}/{RUN_CONFIG_FILE}"
    with fs.open_output_stream(f"{path}.tmp") as stream:
        stream.write(dump_config(cfg.resolved()).encode())
    fs.move(f"{path}.tmp", path)
    return path


def recorded_run_config(cfg: Config, run_name: str) -> Config | None:
    """The config Ray run ``run_name`` recorded beside its checkpoints, or None if it has
    none (a new run, or one started before the file was kept). A file that is there but
    cannot be read is refused (ConfigError): a resume would go unchecked."""
    import pyarrow.fs as pafs

    fs, folder = _run_storage(cfg, run_name)
    path = f"{folder}/{RUN_CONFIG_FILE}"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / RUN_CONFIG_FILE  # load_config reads local files only
        try:
            if fs.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            with fs.open_input_stream(path) as stream:
                copy.write_bytes(stream.read())
            return load_config(copy)
        except (OSError, ConfigError) as exc:
            reason = str(exc).removeprefix(f"{copy}: ")
    raise ConfigError(f"ray.run_name: run {run_name!r} has a config beside its checkpoints "
                      f"that cannot be read ({path}: {reason}); a resume could not be checked "
                      "against it: restore the file, or give a new ray.run_name")


def check_same_run(cfg: Config) -> None:
    """Refuse to resume Ray run ``ray.run_name`` with settings other than its own: its
    checkpoint, MLflow params and registered model would disagree with what was trained.

    Compared with the config recorded beside the run's checkpoints (found whatever MLflow
    store or experiment the job names now), then with the one its MLflow run logged."""
    name = cfg.ray.run_name
    if not name:
        return
    recorded = recorded_run_config(cfg, name)
    changed = (differences(recorded, cfg.resolved(), may_change=TRAIN_RESUME_MAY_CHANGE)
               if recorded is not None else None)
    if not changed:
        run_id = find_run(cfg, name)
        if run_id is None:
            return
        changed = changed_settings(cfg, run_id, may_change=TRAIN_RESUME_MAY_CHANGE)
    if changed:
        raise ConfigError(f"ray.run_name: run {name!r} was started with other settings "
                          f"({'; '.join(changed)}); resume it with its original settings, or "
                          "give a new ray.run_name")


# -- read-only commands ----------------------------------------------------------------
def check_store_readable(uri: str) -> None:
    """For commands that only read the registry (predict, evaluate, registry): the store
    must exist and answer. A missing sqlite file is refused, not created empty; a server
    gets one quick ``/health`` request (:func:`check_tracking_store`)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not os.path.isfile(path):
            raise TrackingUnavailable(
                f"MLflow store {uri}: no database file at {path}; a model is read from the "
                "store training wrote to: check MLFLOW_TRACKING_URI, mlflow.tracking_uri "
                "and --project-dir (the default store is <project dir>/mlflow.db)")
    check_tracking_store(uri)
