"""Logging a trained model as a pyfunc, registering it, and guarding the champion alias."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

import pdml_ray
from pdml_ray.config import Config
from pdml_ray.data import dataset_class
from pdml_ray.service.tracking import tracking_uri_scope

log = logging.getLogger(__name__)

VAL_MIOU_TAG = "val_miou"
ENTRY_SCRIPT = Path(__file__).with_name("pyfunc_entry.py")
PACKAGE_DIR = Path(pdml_ray.__file__).parent

SIGNATURE = ModelSignature(
    # Unnamed specs: the pyfunc receives and returns plain arrays, not {name: array}.
    inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
    outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1))]),
)


def _requirements() -> list[str]:
    import PIL
    import pyarrow
    import scipy
    import torchvision
    import yaml

    def pin(name: str, version: str) -> str:
        return f"{name}=={version.split('+')[0]}"

    return [pin("torch", torch.__version__), pin("torchvision", torchvision.__version__),
            pin("numpy", np.__version__), pin("pillow", PIL.__version__),
            pin("pyyaml", yaml.__version__), pin("scipy", scipy.__version__),
            pin("pyarrow", pyarrow.__version__), pin("mlflow", mlflow.__version__)]


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    model_uri: str  # runs:/<run>/model
    val_miou: float
    is_champion: bool


def log_and_register(cfg: Config, *, run_id: str, state_dict: dict, val_miou: float,
                     per_class_iou: list[float] | None = None) -> RegisteredModel:
    """Log the pyfunc into ``run_id``, register it, and move the champion alias if better."""
    dataset = dataset_class(cfg.data.dataset)
    with tempfile.TemporaryDirectory() as folder, tracking_uri_scope(cfg.mlflow.tracking_uri):
        weights = Path(folder) / "weights.pt"
        config = Path(folder) / "config.json"
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, weights)
        config.write_text(json.dumps(cfg.to_dict(), indent=2))
        metadata = {"classes": list(dataset.classes),
                    "palette": [list(color) for color in dataset.palette],
                    "val_miou": val_miou, "per_class_iou": per_class_iou or []}
        with mlflow.start_run(run_id=run_id, nested=False):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(ENTRY_SCRIPT),
                artifacts={"weights": str(weights), "config": str(config)},
                code_paths=[str(PACKAGE_DIR)], pip_requirements=_requirements(),
                signature=SIGNATURE, metadata=metadata)
        version = mlflow.register_model(info.model_uri, cfg.mlflow.registered_model).version
    client = MlflowClient(cfg.mlflow.tracking_uri)
    name = cfg.mlflow.registered_model
    client.set_model_version_tag(name, version, VAL_MIOU_TAG, f"{val_miou:.6f}")
    promoted = promote_if_better(client, name, version, val_miou, alias=cfg.mlflow.champion_alias)
    return RegisteredModel(name, str(version), info.model_uri, val_miou, promoted)


def champion_score(client: MlflowClient, name: str, alias: str) -> tuple[str, float] | None:
    """(version, val mIoU) of the current alias holder, or None if there is none."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    score = version.tags.get(VAL_MIOU_TAG)
    return version.version, float(score) if score is not None else float("-inf")


def promote_if_better(client: MlflowClient, name: str, version: str, val_miou: float, *,
                      alias: str = "champion") -> bool:
    """Move ``alias`` to ``version`` only if its val mIoU beats the current holder's."""
    current = champion_score(client, name, alias)
    if current is not None and current[1] >= val_miou:
        log.info("%s@%s stays at version %s (val mIoU %.4f >= %.4f)", name, alias, current[0],
                 current[1], val_miou)
        return False
    client.set_registered_model_alias(name, alias, version)
    log.info("%s@%s -> version %s (val mIoU %.4f)", name, alias, version, val_miou)
    return True
