"""Ray Tune sweeps over margin, extension threshold and loss weights.

Each trial is a Tune *function* trainable that calls the same :func:`run_training` as
``jobs.train`` (Train V2 does not accept a TorchTrainer inside a Tuner), with Ray
Train's ``TuneReportCallback`` forwarding every evaluation to Tune for ASHA. MLflow
holds one parent run per sweep and a nested child run per trial; after the sweep the
parent gets a results table (the paper's Table 4 shape) and plots, and the best trial's
model is registered, moving ``champion`` only if it is better.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from pdml_ray.config import Config, ConfigError, from_dict, resolve_paths
from pdml_ray.service.driver import prepare_data, run_training, unique_run_name
from pdml_ray.service.checkpoint import load_training_state
from pdml_ray.service.preflight import changed_settings
from pdml_ray.service.progress import TrialLines
from pdml_ray.service.registry.model_uri import newest_version
from pdml_ray.service.registry.register import VAL_MIOU_TAG, RegisteredModel, log_and_register
from pdml_ray.service.tracking import (RUN_NAME_TAG, check_tracking_store, end_run,
                                       experiment_id, find_run, start_run)

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


def expected_evaluations(cfg: Config) -> int:
    """Evaluations a trial that is not stopped makes (every eval_every_epochs, and the last)."""
    every, epochs = cfg.train.eval_every_epochs, cfg.train.epochs
    return epochs // every + (1 if epochs % every else 0)


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


def results_table(cfg: Config, sweep_name: str, *,
                  ended_cleanly: set[str] = frozenset()) -> list[dict]:
    """One row per trial from its MLflow child run: swept values, best val mIoU, status.

    A trial is ``stopped early`` when it made fewer evaluations than a full run and ended
    without an error: ASHA stopped it. Its MLflow run, left RUNNING (the trial was killed
    before it could close it) or marked FAILED (the stop reached it as an exception), is
    closed as KILLED. ``ended_cleanly`` holds the trial ids Tune ended without an error.
    """
    full = expected_evaluations(cfg)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    exp = experiment_id(client, cfg.mlflow.experiment, cfg.mlflow.artifact_location)
    runs = client.search_runs([exp], filter_string=f"tags.`pdml.sweep` = '{sweep_name}' and "
                                                   f"tags.`{RUN_NAME_TAG}` != '{sweep_name}'")
    rows = []
    for run in runs:
        evals = client.get_metric_history(run.info.run_id, "val_miou")
        best = max(evals, key=lambda m: m.value) if evals else None
        status = run.info.status
        trial_id = run.data.tags.get("pdml.trial_id", "")
        if status == "RUNNING" or (status == "FAILED" and trial_id in ended_cleanly):
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            status = "KILLED"
        if status in ("FINISHED", "KILLED"):
            status = "completed" if len(evals) >= full else "stopped early"
        pixel = {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                    "val_pixel_acc")}
        rows.append({
            "trial": trial_id,
            "alpha": float(run.data.params["loss.alpha"]),
            "beta": float(run.data.params["loss.beta"]),
            "margin": float(run.data.params["loss.margin"]),
            "threshold": float(run.data.params["extension.threshold"]),
            "pdml_weight": float(run.data.params["loss.pdml_weight"]),
            "lr": float(run.data.params["train.lr"]),
            "val_miou": best.value if best else float("nan"),
            "val_pixel_acc": pixel.get(best.step, float("nan")) if best else float("nan"),
            "evaluations": len(evals),
            "status": status.lower(),
            "run_id": run.info.run_id,
            "ray_run_name": run.data.tags.get(RUN_NAME_TAG, ""),
        })
    rows.sort(key=lambda r: (-r["val_miou"] if not math.isnan(r["val_miou"]) else math.inf))
    return rows


COLUMNS = ("alpha", "beta", "margin", "threshold", "pdml_weight", "lr", "val_miou",
           "val_pixel_acc", "evaluations", "status")


def table_markdown(rows: list[dict]) -> str:
    """The paper's Table 4 layout: alpha, beta, m, ... | mIoU, pixel accuracy."""
    head = ("| alpha | beta | m | threshold | PDML weight | lr | mIoU | Pixel Acc | evals "
            "| status |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['alpha']:g} | {r['beta']:g} | {r['margin']:g} | {r['threshold']:.3g} | "
                     f"{r['pdml_weight']:g} | {r['lr']:g} | {100 * r['val_miou']:.1f} | "
                     f"{100 * r['val_pixel_acc']:.1f}% | {r['evaluations']} | {r['status']} |")
    return "\n".join(lines) + "\n"


def table_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*COLUMNS, "trial", "run_id"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot_sweep(rows: list[dict], path: Path) -> None:
    """Val mIoU against margin and against threshold, one point per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, key, label in ((axes[0], "margin", "margin m"),
                           (axes[1], "threshold", "extension threshold")):
        done = [r for r in rows if r["status"] == "completed"]
        stopped = [r for r in rows if r["status"] != "completed"]
        ax.scatter([r[key] for r in done], [r["val_miou"] for r in done], label="completed")
        ax.scatter([r[key] for r in stopped], [r["val_miou"] for r in stopped], marker="x",
                   label="stopped early")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val mIoU")
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_sweep_report(cfg: Config, parent_run_id: str, rows: list[dict]) -> None:
    client = MlflowClient(cfg.mlflow.tracking_uri)
    client.log_text(parent_run_id, table_markdown(rows), "sweep/results.md")
    client.log_text(parent_run_id, table_csv(rows), "sweep/results.csv")
    with tempfile.TemporaryDirectory() as folder:
        plot = Path(folder) / "val_miou_vs_margin_threshold.png"
        plot_sweep(rows, plot)
        client.log_artifact(parent_run_id, str(plot), "sweep")
    if rows and not math.isnan(rows[0]["val_miou"]):
        client.log_metric(parent_run_id, "best_val_miou", rows[0]["val_miou"])
        client.set_tag(parent_run_id, "pdml.best_trial_run", rows[0]["run_id"])


def register_best(cfg: Config, sweep_name: str, rows: list[dict]) -> RegisteredModel | None:
    """Register the best checkpoint of the best trial into that trial's MLflow run."""
    if not rows or math.isnan(rows[0]["val_miou"]):
        return None
    best = rows[0]
    client = MlflowClient(cfg.mlflow.tracking_uri)
    version = newest_version(client, name=cfg.mlflow.registered_model, run_id=best["run_id"])
    if version is not None:  # a resumed sweep that had already registered its best trial
        log.info("best trial already registered as %s/%s", version.name, version.version)
        aliases = client.get_registered_model(version.name).aliases
        return RegisteredModel(version.name, str(version.version), version.source,
                               float(version.tags.get(VAL_MIOU_TAG, "nan")),
                               str(aliases.get(cfg.mlflow.champion_alias)) == str(version.version))
    result = ray.train.Result.from_path(os.path.join(cfg.ray.storage_path, best["ray_run_name"]))
    checkpoint = result.get_best_checkpoint(metric="val_miou", mode="max")
    with checkpoint.as_directory() as folder:
        state = load_training_state(folder)
    trial_cfg = from_dict(state["config"])
    return log_and_register(trial_cfg, run_id=best["run_id"], state_dict=state["model"],
                            val_miou=state["metrics"]["val_miou"],
                            per_class_iou=state["metrics"]["per_class_iou"])
