"""The registered pyfunc predicts exactly what ``SceneParser`` predicts with the weights it
was logged from: same class ids, pixel for pixel, for a batch and for a single image."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from pdml_ray.config import from_dict, resolve_paths
from pdml_ray.data.synthetic import SYNTHETIC_CLASSES
from pdml_ray.inference import SceneParser
from pdml_ray.models import build_model
from pdml_ray.service.registry.register import log_and_register
from pdml_ray.service.tracking import start_run, tracking_uri_scope


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """(the in-memory SceneParser, the pyfunc loaded back from @champion)."""
    folder = tmp_path_factory.mktemp("parity")
    cfg = resolve_paths(from_dict({
        "model": {"backbone": "resnet18", "pretrained": None, "head": "linear"},
        "mlflow": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
                   "artifact_location": str(folder / "artifacts"), "experiment": "parity"}}),
        folder)
    torch.manual_seed(0)
    model = build_model(num_classes=len(SYNTHETIC_CLASSES), backbone="resnet18", head="linear")
    run_id = start_run(cfg, ray_run_name="parity")
    log_and_register(cfg, run_id=run_id, state_dict=model.state_dict(), val_miou=0.5)
    with tracking_uri_scope(cfg.mlflow.tracking_uri):
        pyfunc = mlflow.pyfunc.load_model("models:/pdml-scene-parser@champion")
    return SceneParser(model, cfg), pyfunc


def images(count: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * width).integers(0, 256, (count, height, width, 3),
                                                          dtype=np.uint8)


@pytest.mark.parametrize("size", [(37, 61), (29, 40), (50, 23)])
def test_the_pyfunc_predicts_the_scene_parsers_classes(logged, size):
    parser, pyfunc = logged
    batch = images(2, *size)
    expected = parser.predict(batch)
    assert len(np.unique(expected)) > 1  # a comparison of constant maps would prove little
    predicted = pyfunc.predict(batch)
    assert predicted.dtype == np.int64 and predicted.shape == (2, *size)
    np.testing.assert_array_equal(predicted, expected)
    np.testing.assert_array_equal(pyfunc.predict(batch[1]), expected[1])  # one (H, W, 3) image
