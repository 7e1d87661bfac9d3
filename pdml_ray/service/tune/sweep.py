"""Ray Tune sweeps over margin, extension threshold and loss weights.

Each trial is a Tune *function* trainable that calls the same :func:`run_training` as
``jobs.train`` (Train V2 does not accept a TorchTrainer inside a Tuner), with Ray
Train's ``TuneReportCallback`` forwarding every evaluation to Tune for ASHA. MLflow
holds one parent run per sweep and a nested child run per trial; after the sweep the
parent gets a results table (the paper's Table 4 shape) and plots (``sweep_results``),
and the best trial's model is registered, moving ``champion`` only if it is better
(``sweep_register``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from pdml_ray.config import Config, ConfigError, from_dict, resolve_paths
from pdml_ray.service.train.driver import prepare_data, run_training, unique_run_name
from pdml_ray.service.train.preflight import changed_settings
from pdml_ray.service.train.progress import TrialLines
from pdml_ray.service.registry.register import RegisteredModel
from pdml_ray.service.runtime import wait_for_ray
from pdml_ray.service.tune.register import register_best
from pdml_ray.service.tune.results import expected_evaluations, log_sweep_report, results_table
from pdml_ray.service.tracking import check_tracking_store, end_run, find_run, start_run

log = logging.getLogger(__name__)

SWEPT = {"margins": "loss.margin", "thresholds": "extension.threshold",
         "alphas": "loss.alpha", "pdml_weights": "loss.pdml_weight",
         "learning_rates": "train.lr"}
# A trial's function process only waits on its Train workers; it needs next to no CPU,
# and Tune refuses a request of exactly 0.
TRIAL_DRIVER_CPU = 0.01


def search_space(cfg: Config) -> dict:
    """Tune's param_space, keyed by dotted config keys (``"loss.margin"``)."""
    sweep = cfg.sweep
    space = {}
    for field, key in SWEPT.items():
        values = getattr(sweep, field)
        if not values:
            continue
        if sweep.search == "grid":
            space[key] = tune.grid_search(list(values))
        elif field == "thresholds" and len(values) > 1:
            space[key] = tune.uniform(min(values), max(values))
        else:
            space[key] = tune.choice(list(values))
    return space


def concurrent_trials(cfg: Config, resources: dict[str, float] | None = None) -> int | None:
    """How many trials run at once: ``sweep.max_concurrent_trials`` when set, else as
    many as the cluster's CPUs (and GPUs) fit, given the workers each trial starts.

    None (no limit) when the cluster cannot hold even one trial right now: an
    autoscaling cluster starts with its head only, and Tune's pending trials are the
    demand that makes the autoscaler add worker nodes.
    """
    if cfg.sweep.max_concurrent_trials:
        return cfg.sweep.max_concurrent_trials
    resources = ray.cluster_resources() if resources is None else resources
    per_trial_cpu = cfg.ray.num_workers * cfg.ray.cpus_per_worker + TRIAL_DRIVER_CPU
    fits = math.floor(resources.get("CPU", 0) / per_trial_cpu)
    if cfg.ray.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0) / cfg.ray.num_workers))
    return fits if fits >= 1 else None


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    return f"{sweep_name}-{trial_id}"


def _trial(params: dict, *, base: dict, sweep_name: str, parent: str) -> None:
    """One trial: the base config plus this trial's values, trained by the shared driver.

    The base config reaches the trial through ``tune.with_parameters``, not the search
    space, so that Tune's progress lines show the swept values only.
    """
    trial_id = tune.get_context().get_trial_id()
    cfg = from_dict(base).replace(**params, **{"ray.run_name": trial_run_name(sweep_name, trial_id),
                                               "mlflow.register": False})
    run_training(cfg, callbacks=[TuneReportCallback()], parent_run_id=parent,
                 tags={"pdml.sweep": sweep_name, "pdml.trial_id": trial_id})


@dataclass(frozen=True)
class SweepResult:
    name: str
    parent_run_id: str
    table: list[dict]  # one row per trial, best first
    registered: RegisteredModel | None


def run_sweep(cfg: Config, *, resume: bool = True) -> SweepResult:
    """Run (or resume) the sweep named ``cfg.sweep.name``; Ray must be initialised."""
    cfg = resolve_paths(cfg)
    check_tracking_store(cfg.mlflow.tracking_uri)
    prepare_data(cfg)  # once here, not raced by concurrent trials
    wait_for_ray()  # a job's local Ray may still be starting (ray_session)
    name = cfg.sweep.name or unique_run_name("sweep")
    path = os.path.join(cfg.ray.storage_path, name)
    restoring = tune.Tuner.can_restore(path)
    if restoring:
        if not resume:
            raise ConfigError(f"sweep.name: a sweep named {name!r} already exists in {path}; "
                              "resume it, or give a new sweep.name")
        # Tune restores the trials' search space, but the trials get today's base config
        # (below): a resumed sweep must be asked for with the settings it started with.
        previous_parent = find_run(cfg, name)
        if previous_parent is not None:
            check_same_sweep(cfg, previous_parent)
    parent_run_id = start_run(cfg, ray_run_name=name, tags={"pdml.sweep": name,
                                                            "pdml.role": "sweep"})
    log.info("MLflow run   %s (parent of the trials' runs) in %s\nTune results %s",
             parent_run_id, cfg.mlflow.tracking_uri, path)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=cfg.to_dict(), sweep_name=name, parent=parent_run_id),
        {"cpu": TRIAL_DRIVER_CPU})
    if restoring:
        log.info("resuming sweep %s from %s (finished trials are kept)", name, path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        # stop_last_trials=False: a trial that reaches the last evaluation ends on its own,
        # closing its MLflow run, instead of being killed by the scheduler at max_t.
        scheduler = (ASHAScheduler(time_attr="training_iteration",
                                   grace_period=cfg.sweep.grace_period,
                                   reduction_factor=cfg.sweep.reduction_factor,
                                   max_t=expected_evaluations(cfg), stop_last_trials=False)
                     if cfg.sweep.scheduler == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            trainable, param_space=search_space(cfg),
            tune_config=tune.TuneConfig(metric="val_miou", mode="max", scheduler=scheduler,
                                        num_samples=cfg.sweep.num_samples,
                                        max_concurrent_trials=concurrent_trials(cfg)),
            run_config=tune.RunConfig(name=name, storage_path=cfg.ray.storage_path,
                                      failure_config=tune.FailureConfig(max_failures=1),
                                      callbacks=[TrialLines(cfg.train.epochs)]))
    try:
        grid = tuner.fit()
        # Tune knows which trials its scheduler stopped: they ended without an error, even
        # when the stop reached the trial's run as an exception and marked it FAILED.
        ended_cleanly = {r.metrics.get("trial_id") for r in grid if r.error is None}
        table = results_table(cfg, name, ended_cleanly=ended_cleanly)
        log_sweep_report(cfg, parent_run_id, table)
        registered = register_best(cfg, name, table) if cfg.mlflow.register else None
    except BaseException:
        end_run(cfg.mlflow.tracking_uri, parent_run_id, failed=True)
        raise
    end_run(cfg.mlflow.tracking_uri, parent_run_id)
    return SweepResult(name, parent_run_id, table, registered)


def check_same_sweep(cfg: Config, parent_run_id: str) -> None:
    """Raise ConfigError naming every setting that differs from the sweep's original
    config (kept as ``config.yaml`` in its MLflow parent run)."""
    changed = changed_settings(cfg, parent_run_id, include_sweep=True)
    if changed:
        raise ConfigError(f"sweep.name: sweep {cfg.sweep.name!r} was started with other settings "
                          f"({'; '.join(changed)}); resume it with its original settings, or "
                          "give a new sweep.name")
