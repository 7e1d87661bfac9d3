"""Registering a sweep's best trial: its best checkpoint logged as a pyfunc into the
trial's own MLflow run and registered, ``champion`` moving only if it is better."""

from __future__ import annotations

import logging
import math
import os

import ray.train
from mlflow.tracking import MlflowClient

from pdml_ray.config import Config, from_dict
from pdml_ray.service.train.checkpoint import load_training_state
from pdml_ray.service.registry.model_uri import newest_version
from pdml_ray.service.registry.register import VAL_MIOU_TAG, RegisteredModel, log_and_register

log = logging.getLogger(__name__)


def register_best(cfg: Config, sweep_name: str, rows: list[dict]) -> RegisteredModel | None:
    """Register the best checkpoint of the best trial (``rows[0]`` of the results table)
    into that trial's MLflow run; None when no trial has a score."""
    if not rows or math.isnan(rows[0]["val_miou"]):
        return None
    best = rows[0]
    client = MlflowClient(cfg.mlflow.tracking_uri)
    existing = newest_version(client, name=cfg.mlflow.registered_model, run_id=best["run_id"])
    if existing is not None:  # a resumed sweep that had already registered its best trial
        log.info("best trial already registered as %s/%s", existing.name, existing.version)
        aliases = client.get_registered_model(existing.name).aliases
        return RegisteredModel(existing.name, str(existing.version), existing.source,
                               float(existing.tags.get(VAL_MIOU_TAG, "nan")),
                               str(aliases.get(cfg.mlflow.champion_alias)) == str(existing.version))
    result = ray.train.Result.from_path(os.path.join(cfg.ray.storage_path, best["ray_run_name"]))
    checkpoint = result.get_best_checkpoint(metric="val_miou", mode="max")
    with checkpoint.as_directory() as folder:
        state = load_training_state(folder)
    trial_cfg = from_dict(state["config"])
    return log_and_register(trial_cfg, run_id=best["run_id"], state_dict=state["model"],
                            val_miou=state["metrics"]["val_miou"],
                            per_class_iou=state["metrics"]["per_class_iou"])
