"""Describing registered models: the versions of one (``jobs.registry list``) and what
one version is, scored and trained with (``jobs.registry show``)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from pdml_ray.service.registry.load import downloads_from, model_files
from pdml_ray.service.registry.model_uri import (filter_value, registered_model,
                                                 resolve_model_version)
from pdml_ray.service.registry.register import VAL_MIOU_TAG


def _score(version: ModelVersion) -> float | None:
    score = version.tags.get(VAL_MIOU_TAG)
    return float(score) if score is not None else None


@dataclass(frozen=True)
class VersionRow:
    """One line of ``jobs.registry list``."""

    version: int
    val_miou: float | None
    run_id: str
    created_ms: int
    aliases: tuple[str, ...]


def list_versions(client: MlflowClient, name: str) -> list[VersionRow]:
    """Every version of registered model ``name``, newest first; raises ModelNotFound."""
    model = registered_model(client, name, f"models:/{name}")
    holders: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        holders.setdefault(str(version), []).append(alias)
    rows = [VersionRow(int(version.version), _score(version), version.run_id or "",
                       int(version.creation_timestamp or 0),
                       tuple(holders.get(str(version.version), ())))
            for version in client.search_model_versions(f"name = {filter_value(name)}")]
    return sorted(rows, key=lambda row: -row.version)


@dataclass(frozen=True)
class ModelSummary:
    """What ``jobs.registry show`` prints about one registered version."""

    version: ModelVersion
    aliases: tuple[str, ...]
    val_miou: float | None
    metadata: dict  # classes, palette, val_miou, per_class_iou (logged with the model)
    config: dict  # the training config the model was trained with
    run: Run | None  # the source run, None if it was deleted


def describe_model(client: MlflowClient, tracking_uri: str, uri: str) -> ModelSummary:
    """The version ``uri`` points at, with its logged metadata and training config."""
    version = resolve_model_version(client, uri)
    source = f"models:/{version.name}/{version.version}"
    with downloads_from(tracking_uri), tempfile.TemporaryDirectory() as folder:
        model, files = model_files(source, folder, "config")
        config = json.loads(files["config"].read_text())
    try:
        run = client.get_run(version.run_id) if version.run_id else None
    except mlflow.exceptions.MlflowException:
        run = None
    aliases = client.get_registered_model(version.name).aliases
    return ModelSummary(version, tuple(sorted(a for a, v in aliases.items()
                                              if str(v) == str(version.version))),
                        _score(version), dict(model.metadata or {}), config, run)
