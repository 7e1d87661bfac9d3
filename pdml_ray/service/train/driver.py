"""The driver: one function that trains a model on Ray and puts it in the registry.

``run_training`` serves ``jobs.train`` and every Ray Tune trial alike: it checks the
tracking store, prepares the data, opens (or resumes) the MLflow run, starts the
EmbeddingStore when asked, runs the TorchTrainer, then registers the best checkpoint.
It expects Ray to be initialised by its caller (a job's ``ray_session`` or a Tune trial).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import secrets
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator, Sequence

import ray
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2._internal.execution.callback import WorkerCallback  # a DeveloperAPI

from pdml_ray.config import Config, resolve_paths
from pdml_ray.console import verbose
from pdml_ray.data import DataError, build_dataset, ensure_synthetic
from pdml_ray.service.train.checkpoint import load_training_state, prune_checkpoints
from pdml_ray.service.train.data_check import StopOnDataError, check_headers, data_error_of_run
from pdml_ray.service.train.phases import PHASES, phase_metric
from pdml_ray.service.train.preflight import check_before_training, record_run_config
from pdml_ray.service.train.progress import console_board
from pdml_ray.service.registry.register import RegisteredModel, log_and_register
from pdml_ray.service.runtime import exit_if_local_ray_lost, wait_for_ray
from pdml_ray.service.train.store import create_stores
from pdml_ray.service.tracking import (MetricLogger, check_tracking_store, end_run,
                                       fail_fast_http, start_run)
from pdml_ray.service.train.reporter import WorkerSpec
from pdml_ray.service.train.worker import train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingResult:
    run_name: str
    mlflow_run_id: str
    best_val_miou: float
    best_val_pixel_acc: float
    per_class_iou: list[float]
    checkpoint_path: str
    registered: RegisteredModel | None
    # where the run's wall time went, by phase (pdml_ray.service.train.phases.PHASES)
    phase_seconds: dict[str, float] = field(default_factory=dict)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`run_training` (SIGINT to a job's main thread). By then the
    Train workers were stopped, the MLflow run was marked KILLED and the checkpoints
    beyond ``ray.keep_checkpoints`` were removed; training the same config under
    ``run_name`` resumes from the newest checkpoint."""

    def __init__(self, run_name: str):
        super().__init__(run_name)
        self.run_name = run_name


class TrainingStopped(BaseException):
    """Raised inside a Train worker's training thread when the run is stopped: a
    BaseException, so that no ``except Exception`` on the way lets the loop go on."""


class StopStepsOnShutdown(WorkerCallback):
    """Stops a Train worker's training thread the moment Ray Train asks the worker to shut
    down while it still trains (Ctrl-C, a failed peer's group torn down): no optimizer
    step and no checkpoint report after the stop reached it. Train kills the actor once
    every worker's shutdown hooks have returned (at most 5 s later): the training thread
    runs on until then, and nothing but timing kept a step or a checkpoint report from
    landing in between (milliseconds, end to end here; a slow hook makes it seconds).
    The thread gets :class:`TrainingStopped` at its next Python call (a forward or
    backward pass under way in C++ finishes first, its step does not follow). A worker
    whose training function has returned is left to Train's own shutdown."""

    def before_worker_shutdown(self) -> None:
        from ray.train.v2._internal.execution.context import get_train_context

        context = get_train_context()
        thread = context.execution_context.training_thread_runner._thread  # pinned Ray
        if thread is None or not thread.is_alive():
            return
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                   ctypes.py_object(TrainingStopped))
        # Taken after the exception is posted: nothing the thread logs comes later. Into
        # the worker's own log (its stderr), not the job's console: Ctrl-C prints one line.
        print(f"rank {context.get_world_rank()}: the stop reached this worker at "
              f"{time.time():.6f} (unix time); its training stops before another step or "
              "checkpoint", file=sys.stderr, flush=True)


def unique_run_name(prefix: str = "pdml") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def prepare_data(cfg: Config) -> None:
    """Generate synthetic scenes if needed and open both splits once on the driver, so
    that a bad dataset or points file fails here with its message, not in every worker;
    and read every file's header (missing, unreadable, wrong mode, sizes that differ)
    before workers start. Truncated bodies and label values need ``jobs.check_data``."""
    if cfg.data.dataset.startswith("synthetic"):
        ensure_synthetic(cfg.data)
    for split in ("train", cfg.data.eval_split):
        problems = check_headers(build_dataset(cfg.data, split, train_transform=False))
        if problems:
            more = (f" (and {len(problems) - 1} more; list them all with `python -m "
                    f"jobs.check_data --dataset {cfg.data.dataset} --root {cfg.data.root} "
                    f"--split {split}`)") if len(problems) > 1 else ""
            raise DataError(problems[0].path, problems[0].problem + more)


def build_trainer(cfg: Config, *, run_name: str, spec: WorkerSpec,
                  callbacks: Sequence = ()) -> TorchTrainer:
    scaling = ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                            resources_per_worker={"CPU": cfg.ray.cpus_per_worker,
                                                  **({"GPU": 1} if cfg.ray.use_gpu else {})})
    run_config = RunConfig(
        name=run_name, storage_path=cfg.ray.storage_path,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.keep_checkpoints,
                                           checkpoint_score_attribute="val_miou",
                                           checkpoint_score_order="max"),
        failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
        # Train's "Reporting training result" / "Checkpoint successfully created" lines
        logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
        # bad data: no retries; a stopped run: no step after the stop reaches a worker
        callbacks=[*callbacks, StopOnDataError(), StopStepsOnShutdown()])
    return TorchTrainer(train_loop_per_worker, train_loop_config={"spec": spec},
                        scaling_config=scaling, run_config=run_config,
                        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"))


def run_training(cfg: Config, *, callbacks: Sequence = (), parent_run_id: str | None = None,
                 tags: dict[str, str] | None = None, console: bool = False,
                 started_at: float | None = None,
                 resume_command: Callable[[str], str] | None = None) -> TrainingResult:
    """Train, evaluate and register; returns the best checkpoint's scores. ``console``:
    print one line per epoch and progress within it (a job's terminal, not a Tune trial).
    ``started_at``: when the command began (``time.time()``), the origin of the start-up
    phase; else this call's own start. ``resume_command(run_name)``: the command line
    that resumes a run; given (a job), losing the local Ray this process started during
    training ends the process with one ``error:`` line saying so and naming it, the
    MLflow run marked FAILED (:func:`_local_ray_lost`)."""
    started_at = time.time() if started_at is None else started_at
    cfg = resolve_paths(cfg)
    uri = cfg.mlflow.tracking_uri
    check_tracking_store(uri)
    prepare_data(cfg)  # while a job's local Ray may still be starting (ray_session)
    wait_for_ray()
    check_before_training(cfg)  # a changed resume, or workers the cluster cannot hold
    run_name = cfg.ray.run_name or unique_run_name()
    record_run_config(cfg, run_name)  # beside the checkpoints: what a resume is checked against
    run_id = start_run(cfg, ray_run_name=run_name, parent_run_id=parent_run_id, tags=tags)
    log.info("MLflow run   %s in %s\ncheckpoints  %s", run_id, uri,
             os.path.join(cfg.ray.storage_path, run_name))
    stores = []
    if cfg.loss.mining == "global+store" and cfg.uses_pdml:
        stores = create_stores(run_name, cfg.loss.store_capacity, cfg.loss.store_shards,
                               seed=cfg.train.seed)
    spec = WorkerSpec(config=cfg.to_dict(), run_id=run_id, tracking_uri=uri,
                      store_run=run_name if stores else None,
                      system_metrics_every_s=float(os.environ.get(
                          "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", 10)))
    # a job's own local Ray lost mid-run: one line, the run FAILED, the process ended
    watch = (exit_if_local_ray_lost(partial(_local_ray_lost, cfg, run_name, run_id,
                                            resume_command))
             if resume_command is not None else nullcontext())
    try:
        try:
            with console_board(run_name) if console else nullcontext() as board:
                spec = dataclasses.replace(spec, progress_board=board,
                                           forward_warnings=not verbose())
                with _sigint_handler_kept(), watch:
                    result = build_trainer(cfg, run_name=run_name, spec=spec,
                                           callbacks=callbacks).fit()
        except ray.train.ControllerError as error:  # StopOnDataError ended the run
            data_error = data_error_of_run(error)
            if data_error is None:
                raise
            raise data_error from None
        fit_done = time.perf_counter()
        _prune_checkpoints(cfg, run_name, interrupted=False)  # every worker has stopped
        if result.error is not None:
            raise result.error
        best = result.get_best_checkpoint(metric="val_miou", mode="max")
        if best is None:
            raise RuntimeError(f"Ray run {run_name} finished without a checkpoint")
        with best.as_directory() as folder:
            state = load_training_state(folder)
        scores = state["metrics"]
        tracker = MetricLogger(uri, run_id)
        tracker.log({"best_val_miou": scores["val_miou"],
                     "best_val_pixel_acc": scores["val_pixel_acc"]}, step=int(scores["step"]))
        if not tracker.flush():
            log.warning("MLflow %s unreachable: best_val_miou and best_val_pixel_acc of run %s "
                        "not logged", uri, run_id)
        registered = None
        if cfg.mlflow.register:
            registered = log_and_register(cfg, run_id=run_id, state_dict=state["model"],
                                          val_miou=scores["val_miou"],
                                          per_class_iou=scores["per_class_iou"])
        phase_seconds = _phase_seconds({**result.metrics, **_logged_metrics(tracker)},
                                       started_at=started_at,
                                       registration_s=time.perf_counter() - fit_done)
        tracker.log({phase_metric(phase): phase_seconds[phase]
                     for phase in ("startup", "registration") if phase in phase_seconds},
                    step=int(scores["step"]))
        tracker.flush()
    except BaseException as exc:
        # SystemExit / KeyboardInterrupt: stopped from outside (Tune's scheduler exits a
        # trial it stops, or Ctrl-C), not failed: the MLflow run says KILLED.
        _mark_failed(uri, run_id, killed=not isinstance(exc, Exception))
        interrupted = _is_interrupt(exc)
        _prune_checkpoints(cfg, run_name, interrupted=interrupted)
        if interrupted:
            raise TrainingInterrupted(run_name) from exc
        raise
    finally:
        for store in stores:
            ray.kill(store)
    end_run(uri, run_id)
    return TrainingResult(run_name=run_name, mlflow_run_id=run_id,
                          best_val_miou=scores["val_miou"],
                          best_val_pixel_acc=scores["val_pixel_acc"],
                          per_class_iou=list(scores["per_class_iou"]),
                          checkpoint_path=best.path, registered=registered,
                          phase_seconds=phase_seconds)


def _logged_metrics(tracker: MetricLogger) -> dict[str, float]:
    """The run's latest metrics in MLflow (rank 0 logs its phases after its last report),
    or none when the store cannot answer now."""
    try:
        with fail_fast_http():
            return dict(tracker.client.get_run(tracker.run_id).data.metrics)
    except Exception as exc:
        log.warning("MLflow %s unreachable: the time split uses the workers' last report "
                    "(%s)", tracker.uri, type(exc).__name__)
        return {}


def _phase_seconds(worker_metrics: dict, *, started_at: float, registration_s: float
                   ) -> dict[str, float]:
    """The run's phases: start-up from ``started_at`` to the first step (the workers
    say when it began), the workers' own phases, and the driver's registration
    (everything after ``fit()``)."""
    seconds = {phase: worker_metrics[phase_metric(phase)] for phase in PHASES
               if phase_metric(phase) in worker_metrics}
    if worker_metrics.get("first_step_unix"):
        seconds["startup"] = worker_metrics["first_step_unix"] - started_at
    seconds["registration"] = registration_s
    return seconds


@contextmanager
def _sigint_handler_kept() -> Iterator[None]:
    """Put back this thread's SIGINT handler after ``fit()``. In the main thread, Train V2's
    ``fit()`` installs its own: the first Ctrl-C aborts the controller, which stops the
    worker group, and ``fit()`` then ends in SystemExit. Left installed, that handler
    would swallow a Ctrl-C during evaluation and registration."""
    if threading.current_thread() is not threading.main_thread():
        yield  # a Tune trial: Train installs nothing there
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def _is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C: a KeyboardInterrupt, or the SystemExit that Train's SIGINT handler raises
    in the main thread (a Tune trial stopped by its scheduler exits in another thread)."""
    return isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, SystemExit) and threading.current_thread() is threading.main_thread())


def _prune_checkpoints(cfg: Config, run_name: str, *, interrupted: bool) -> None:
    """After an interrupt, checkpoints beyond ``ray.keep_checkpoints`` (Ray leaves the
    latest besides the best, and one written but not yet registered when the run
    stopped) are removed, keeping the newest for the resume and the best by val mIoU.
    After any other end, only the folders Ray never registered go (a worker killed
    during an asynchronous upload leaves a partial one); Ray's own choice stays."""
    keep = cfg.ray.keep_checkpoints if interrupted else None
    try:
        removed = prune_checkpoints(cfg.ray.storage_path, run_name, keep)
    except Exception as exc:  # how the run ended is what the user must see
        log.warning("could not remove the %s checkpoints of run %s: %s",
                    f"beyond ray.keep_checkpoints={keep}" if interrupted else "unregistered",
                    run_name, exc)
        return
    if removed:
        log.info("removed %d %s checkpoint(s): %s", len(removed),
                 f"beyond ray.keep_checkpoints={keep}" if interrupted else "unregistered",
                 ", ".join(removed))


def _mark_failed(uri: str, run_id: str, *, killed: bool = False) -> bool:
    """Mark the MLflow run FAILED (or KILLED) without hiding the error that ended it: when
    the tracking store is itself what went away, say so (after one quick try, not minutes
    of MLflow's retries) and let the original error through. True if it was marked."""
    try:
        with fail_fast_http():
            end_run(uri, run_id, failed=True, killed=killed)
    except Exception as exc:
        log.warning("could not mark MLflow run %s as FAILED in %s: %s", run_id, uri, exc)
        return False
    return True


RAY_PROCESS_NAMES = {"raylet": "raylet", "gcs_server": "GCS server"}


def _local_ray_lost(cfg: Config, run_name: str, run_id: str,
                    resume_command: Callable[[str], str], died: list[str]) -> None:
    """What a job says when its local Ray went away mid-run (``died``: its raylet, its GCS
    server): the MLflow run marked FAILED, the checkpoints Ray never registered removed
    (the registered ones stay for the resume), and one line naming the command that
    resumes the run. The process ends right after (:func:`exit_if_local_ray_lost`)."""
    marked = _mark_failed(cfg.mlflow.tracking_uri, run_id)
    _prune_checkpoints(cfg, run_name, interrupted=False)
    what = " and ".join(RAY_PROCESS_NAMES.get(name, name) for name in died)
    run = ("the MLflow run is marked FAILED" if marked else
           f"the MLflow run {run_id} could not be marked FAILED")
    print(f"error: the Ray cluster went away during run {run_name!r} (its {what} stopped: "
          f"`ray stop`, the OOM killer or a crash); {run} and its checkpoints are kept: "
          f"resume with  {resume_command(run_name)}", file=sys.stderr, flush=True)

