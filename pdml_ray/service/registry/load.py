"""Loading a logged model for prediction: its weights and config downloaded, a
:class:`SceneParser` built on this checkout's code; nothing pickled is executed."""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import mlflow
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import Model
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.tracking import MlflowClient

from pdml_ray.service.registry.pyfunc_model import CONFIG_FILE, LOADER_MODULE, WEIGHTS_FILE
from pdml_ray.service.registry.model_uri import (ModelNotFound, newest_version, parse_model_uri,
                                                 resolve_model_version)
from pdml_ray.service.tracking import environ_scope, tracking_uri_scope

if TYPE_CHECKING:
    from pdml_ray.inference import SceneParser

DATA_FILES = {"weights": WEIGHTS_FILE, "config": CONFIG_FILE}


@contextmanager
def downloads_from(tracking_uri: str) -> Iterator[None]:
    """MLflow's artifact downloads reading ``tracking_uri`` for a block, without their
    progress bars (they would interleave with the jobs' own)."""
    with environ_scope({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}), \
            tracking_uri_scope(tracking_uri):
        yield


def _download(uri: str, path: str, folder: str) -> Path:
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{path}",
                                                        dst_path=folder))
    except mlflow.exceptions.MlflowException as exc:
        raise ModelNotFound(f"{uri}: {exc.message}") from None


def model_files(uri: str, folder: str, *names: str) -> tuple[Model, dict[str, Path]]:
    """The model's MLmodel, and its data files ``names`` ("weights", "config")
    downloaded into ``folder``; call it inside :func:`downloads_from`."""
    model = Model.load(_download(uri, MLMODEL_FILE_NAME, folder))
    flavor = model.flavors.get("python_function", {})
    if flavor.get("loader_module") != LOADER_MODULE or "data" not in flavor:
        raise ModelNotFound(f"{uri}: not a pdml_ray scene parser (its pyfunc loader is "
                            f"{flavor.get('loader_module')!r}, not {LOADER_MODULE!r})")
    return model, {name: _download(uri, f"{flavor['data']}/{DATA_FILES[name]}", folder)
                   for name in names}


def _download_uri(client: MlflowClient, uri: str) -> tuple[str, ModelVersion | None]:
    """(URI to download from, registered version or None): a models:/ URI is pinned to
    its version first, so an alias moving meanwhile cannot mix two versions' files."""
    ref = parse_model_uri(uri)
    if ref.run_id is not None:
        return uri, newest_version(client, run_id=ref.run_id)
    version = resolve_model_version(client, uri)
    return f"models:/{version.name}/{version.version}", version


@dataclass(frozen=True)
class LoadedModel:
    """A scene parser read from the registry, and where it came from."""

    parser: SceneParser
    uri: str
    version: ModelVersion | None  # None for a model logged in a run but never registered
    run_id: str | None
    metadata: dict


def load_scene_parser(tracking_uri: str, uri: str, *,
                      device: str | torch.device | None = None) -> LoadedModel:
    """Download a logged model's weights and config and build a :class:`SceneParser`
    on ``device`` (None: a GPU when there is one, else the CPU).

    Only the state_dict and the JSON config are read (``torch.load(weights_only=True)``):
    the model runs on this checkout's code, and nothing pickled is executed.

    Raises:
        ModelNotFound: the URI names no model (the message says what exists).
    """
    # Imported here: it pulls in torchvision, which the registry commands do not need.
    from pdml_ray.inference import SceneParser

    client = MlflowClient(tracking_uri)
    with downloads_from(tracking_uri), tempfile.TemporaryDirectory() as folder:
        source, version = _download_uri(client, uri)
        model, files = model_files(source, folder, "weights", "config")
        state = torch.load(files["weights"], map_location="cpu", weights_only=True)
        config = json.loads(files["config"].read_text())
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = SceneParser.from_state(state, config, device=device)
    run_id = version.run_id if version is not None else model.run_id
    return LoadedModel(parser, uri, version, run_id, dict(model.metadata or {}))
