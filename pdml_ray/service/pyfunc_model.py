"""The MLflow pyfunc flavour of a trained model: a loader module, not pickled code.

A registered model holds data only: ``weights.pt`` (a state_dict) and ``config.json``
under ``data/scene_parser/``. Its ``MLmodel`` names this module as the loader, so
``mlflow.pyfunc.load_model`` runs the code of the pdml_ray installed where the model is
loaded, never code that came with the model from the registry, and reads the weights
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

DATA_FOLDER = "scene_parser"  # the name of the model's data folder, under data/
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"


class SceneParserModel:
    """pyfunc input: uint8 ``(N, H, W, 3)`` of any H, W; output: int64 ``(N, H, W)``."""

    def __init__(self, data_path: str | Path, device: str | None = None):
        from pdml_ray.inference import SceneParser

        data_path = Path(data_path)
        config = json.loads((data_path / CONFIG_FILE).read_text())
        state = torch.load(data_path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.parser = SceneParser.from_state(state, config, device=device)

    def predict(self, model_input, params=None) -> np.ndarray:
        if isinstance(model_input, dict) and len(model_input) == 1:  # {name: array} form
            (model_input,) = model_input.values()
        return self.parser.predict(np.asarray(model_input))


def _load_pyfunc(data_path: str) -> SceneParserModel:
    """MLflow's loader-module hook: ``data_path`` is the model's ``data/scene_parser``."""
    return SceneParserModel(data_path)
