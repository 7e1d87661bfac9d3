"""The MLflow pyfunc flavour of a trained model: a loader module, not pickled code.

A registered model holds data only: ``weights.pt`` (a state_dict) and ``config.json``
under ``data/scene_parser/``. Its ``MLmodel`` names this module as the loader, so
``mlflow.pyfunc.load_model`` runs the code of the pdml_ray installed where the model is
loaded, never code that came with the model from the registry, and reads the weights
with ``torch.load(weights_only=True)``.

Input is checked here, not by an MLflow input schema: ``mlflow models serve`` casts the
JSON numbers of a request to a schema's dtype before the model sees them (a float image
with values in 0..1 would become all zeros and be answered with 200), and one tensor
spec cannot accept both ``(N, H, W, 3)`` and a single ``(H, W, 3)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

# The loader every logged MLmodel names: this module. Registered models keep the name, so
# moving or renaming the module would leave them without their loader.
LOADER_MODULE = "pdml_ray.service.registry.pyfunc_model"
DATA_FOLDER = "scene_parser"  # the name of the model's data folder, under data/
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
EXPECTED_INPUT = "uint8 images, N x H x W x 3 or a single H x W x 3 (RGB, values 0..255)"


class InvalidImages(MlflowException):
    """Input the model refuses; the scoring server answers it with HTTP 400.

    The message stays the reason alone: the scoring server rewrites the message of an
    MlflowException raised by ``predict`` as ``Failed to predict data '<the whole input>'``,
    which makes the reply as large as the request (10 KB for a 16 x 20 image).
    """

    def __init__(self, reason: str):
        self._reason = reason
        super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, value: str) -> None:
        pass  # keep the reason; see the class docstring


def as_images(model_input) -> tuple[np.ndarray, bool]:
    """``(uint8 (N, H, W, 3), single)`` from what ``predict`` was given; raises
    :class:`InvalidImages` naming what is wrong.

    uint8 arrays pass as they are. Integer arrays with values in 0..255 are accepted too:
    that is how a JSON request carries a uint8 image (``{"inputs": [[[[r, g, b], ...]]]}``
    arrives as int64). Floats are refused, whatever their range: guessing whether 0..1 or
    0..255 was meant would silently give wrong classes.
    """
    if isinstance(model_input, dict) and len(model_input) == 1:  # {name: array} form
        (model_input,) = model_input.values()
    if not isinstance(model_input, (np.ndarray, list, tuple)):
        raise InvalidImages(f"expected {EXPECTED_INPUT}; got a {type(model_input).__name__} "
                            "(send {\"inputs\": <nested lists>})")
    try:
        images = np.asarray(model_input)
    except ValueError:  # ragged nested lists
        raise InvalidImages(f"expected {EXPECTED_INPUT}; got nested lists of uneven "
                            "lengths (images of one request must share H and W)") from None
    single = images.ndim == 3
    if images.ndim not in (3, 4) or images.shape[-1] != 3 or 0 in images.shape:
        raise InvalidImages(f"expected {EXPECTED_INPUT}; got shape {images.shape}")
    if images.dtype != np.uint8:
        if images.dtype.kind not in "iu":
            raise InvalidImages(f"expected {EXPECTED_INPUT}; got dtype {images.dtype}")
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise InvalidImages(f"expected {EXPECTED_INPUT}; got integers from {low} to {high}")
        images = images.astype(np.uint8)
    return (images[None] if single else images), single


class SceneParserModel:
    """pyfunc input: uint8 ``(N, H, W, 3)`` of any H, W, or one ``(H, W, 3)``;
    output: int64 ``(N, H, W)`` (``(H, W)`` for one image)."""

    def __init__(self, data_path: str | Path, device: str | None = None):
        from pdml_ray.inference import SceneParser

        data_path = Path(data_path)
        config = json.loads((data_path / CONFIG_FILE).read_text())
        state = torch.load(data_path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.parser = SceneParser.from_state(state, config, device=device)

    def predict(self, model_input, params=None) -> np.ndarray:
        images, single = as_images(model_input)
        predictions = self.parser.predict(images)
        return predictions[0] if single else predictions


def _load_pyfunc(data_path: str) -> SceneParserModel:
    """MLflow's loader-module hook: ``data_path`` is the model's ``data/scene_parser``."""
    return SceneParserModel(data_path)
