"""Evaluation runs: an evaluation's scores and report folder logged to MLflow, in a run
of its own tagged with the evaluated model, or into the run that trained the model."""

from __future__ import annotations

import math
import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pdml_ray.config import Config
from pdml_ray.data import dataset_class
from pdml_ray.service.registry.load import LoadedModel
from pdml_ray.service.registry.model_uri import ModelNotFound
from pdml_ray.service.tracking import experiment_id, metric_key

EVALUATED_MODEL_TAG = "pdml.evaluated_model"
EVALUATED_VERSION_TAG = "pdml.evaluated_version"


def log_evaluation(cfg: Config, loaded: LoadedModel, *, report_dir: str | Path, scores: dict,
                   params: dict[str, str], to_model_run: bool = False) -> str:
    """Log an evaluation's scores and report folder to MLflow; returns the run id.

    By default into a new run of the configured experiment, tagged with the evaluated
    model URI and version; with ``to_model_run`` into the run that trained the model,
    under ``evaluation/<report folder name>``, its metrics prefixed ``eval_``.
    """
    client = MlflowClient(cfg.mlflow.tracking_uri)
    version = loaded.version.version if loaded.version is not None else None
    if to_model_run:
        if loaded.run_id is None:
            raise ModelNotFound(f"{loaded.uri}: the model names no training run to log into")
        run_id = loaded.run_id
    else:
        exp_id = experiment_id(client, cfg.mlflow.experiment, cfg.mlflow.artifact_location)
        tags = {EVALUATED_MODEL_TAG: loaded.uri, "pdml.evaluated_run": loaded.run_id or ""}
        if version is not None:
            tags[EVALUATED_VERSION_TAG] = str(version)
        run_name = f"evaluate-{loaded.version.name}-v{version}" if version else "evaluate"
        run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    names = dataset_class(cfg.data.dataset).classes
    now = int(time.time() * 1000)
    metrics = [Metric("eval_miou", scores["miou"], now, 0),
               Metric("eval_pixel_acc", scores["pixel_acc"], now, 0)]
    metrics += [Metric(f"eval_iou_{metric_key(name)}", iou, now, 0)
                for name, iou in zip(names, scores["per_class_iou"]) if not math.isnan(iou)]
    for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    artifact_path = f"evaluation/{Path(report_dir).name}" if to_model_run else "evaluation"
    client.log_artifacts(run_id, str(report_dir), artifact_path)
    if not to_model_run:
        client.set_terminated(run_id)
    return run_id
