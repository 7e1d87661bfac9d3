"""The MLflow pyfunc flavour of a trained model (logged as "models from code").

The registered model holds the state_dict, the JSON config and this source file: no
pickled Python objects, so loading it runs only code that is in plain sight.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import torch


class SceneParserModel(mlflow.pyfunc.PythonModel):
    """pyfunc input: uint8 ``(N, H, W, 3)`` of any H, W; output: int64 ``(N, H, W)``."""

    def load_context(self, context) -> None:
        from pdml_ray.inference import SceneParser

        with open(context.artifacts["config"]) as handle:
            config = json.load(handle)
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.parser = SceneParser.from_state(state, config, device=device)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        if isinstance(model_input, dict) and len(model_input) == 1:  # {name: array} form
            (model_input,) = model_input.values()
        return self.parser.predict(np.asarray(model_input))
