"""Logging a trained model as the pyfunc that :mod:`pdml_ray.service.registry.pyfunc_model` loads.

The model is data only: the state_dict and the training config in ``data/scene_parser/``,
with the loader module's name, the output signature, an input example, the dataset's
classes and palette as metadata, and pip requirements pinned to what is installed here.
"""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from packaging.requirements import Requirement

from pdml_ray.config import Config
from pdml_ray.data import dataset_class
from pdml_ray.service.registry.pyfunc_model import CONFIG_FILE, DATA_FOLDER, LOADER_MODULE, WEIGHTS_FILE
from pdml_ray.service.tracking import tracking_uri_scope

DISTRIBUTION = "pdml_ray"  # this project's installed distribution, whose code loads the model

SIGNATURE = ModelSignature(
    # No input schema: the pyfunc checks its input itself (pyfunc_model.as_images), because
    # the scoring server would cast a request to a schema's dtype first (floats to uint8,
    # silently) and a tensor spec cannot accept both (N, H, W, 3) and (H, W, 3).
    # Unnamed output spec: the pyfunc returns a plain array, not {name: array}.
    inputs=None,
    outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1))]),
)


def input_example() -> np.ndarray:
    """What the logged model shows a user to send: one 16 x 16 RGB image, uint8
    ``(1, 16, 16, 3)`` (MLflow stores it as ``{"inputs": ...}`` JSON beside the model)."""
    return np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)


def _pinned(name: str, extras: set[str] = frozenset()) -> str:
    # A local version label (torch's "+cpu") is left out: "==2.5.1" accepts 2.5.1+cpu,
    # and an index without local builds can still install it.
    version = importlib.metadata.version(name).split("+")[0]
    return f"{name}[{','.join(sorted(extras))}]=={version}" if extras else f"{name}=={version}"


def requirements() -> list[str]:
    """The logged model's pip requirements: this project's distribution and every runtime
    requirement its metadata declares (optional extras such as ``dev`` left out), each
    pinned to the version installed here, where the model was trained."""
    declared = [Requirement(text) for text in importlib.metadata.requires(DISTRIBUTION) or []]
    runtime = [req for req in declared
               if req.marker is None or req.marker.evaluate({"extra": ""})]
    return [_pinned(DISTRIBUTION)] + [_pinned(req.name, req.extras) for req in runtime]


def log_pyfunc(cfg: Config, *, run_id: str, state_dict: dict, val_miou: float,
               per_class_iou: list[float] | None = None) -> str:
    """Log the model into run ``run_id`` as ``model``; returns the URI MLflow gives it
    (what ``mlflow.register_model`` takes)."""
    dataset = dataset_class(cfg.data.dataset)
    metadata = {"classes": list(dataset.classes),
                "palette": [list(color) for color in dataset.palette],
                "val_miou": val_miou, "per_class_iou": per_class_iou or [],
                "pdml_ray_version": importlib.metadata.version(DISTRIBUTION)}
    with tempfile.TemporaryDirectory() as folder, tracking_uri_scope(cfg.mlflow.tracking_uri):
        data = Path(folder) / DATA_FOLDER
        data.mkdir()
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, data / WEIGHTS_FILE)
        (data / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
        with mlflow.start_run(run_id=run_id, nested=False):
            # Data only, and the name of the loader module: loading runs the installed
            # pdml_ray, not code shipped inside the registry (docs/robustness.md).
            info = mlflow.pyfunc.log_model(
                name="model", loader_module=LOADER_MODULE, data_path=str(data),
                pip_requirements=requirements(), signature=SIGNATURE,
                input_example=input_example(), metadata=metadata)
    return info.model_uri
