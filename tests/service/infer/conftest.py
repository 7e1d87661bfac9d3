"""A registered model and a split with clicks, for the suggestion round's tests."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from pdml_ray.config import from_dict, resolve_paths
from pdml_ray.data import SyntheticDataset, generate_point_table, generate_scenes, write_points
from pdml_ray.data.synthetic import SYNTHETIC_CLASSES
from pdml_ray.models import build_model
from pdml_ray.service.registry.register import log_and_register
from pdml_ray.service.tracking import start_run


@pytest.fixture(scope="session")
def suggest_setup(tmp_path_factory):
    """models:/pdml-scene-parser@champion (random resnet18 weights, seeded) in a sqlite
    store; 6 synthetic 32x32 train scenes; a points file with every other image's
    one-point-per-instance clicks."""
    folder = tmp_path_factory.mktemp("suggest")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg = resolve_paths(from_dict({
        "data": {"dataset": "synthetic", "crop_size": 32},
        "model": {"backbone": "resnet18", "pretrained": None, "head": "linear"},
        "mlflow": {"tracking_uri": uri, "artifact_location": str(folder / "artifacts"),
                   "experiment": "suggest"}}), folder)
    import torch

    torch.manual_seed(0)
    model = build_model(num_classes=len(SYNTHETIC_CLASSES), backbone="resnet18", head="linear")
    log_and_register(cfg, run_id=start_run(cfg, ray_run_name="hand-made"),
                     state_dict=model.state_dict(), val_miou=0.5)
    scenes = folder / "scenes"
    generate_scenes(scenes, train=6, val=1, size=32, seed=2)
    data = SyntheticDataset(scenes, "train")
    full = generate_point_table(data, seed=0)
    kept = {image_id: full.for_image(image_id) for image_id in data.image_ids[::2]}
    points = folder / "points_train.parquet"
    write_points(points, kept, full.metadata)
    return SimpleNamespace(uri=uri, scenes=scenes, points=points, folder=folder,
                           state_dict=model.state_dict(), config=cfg.to_dict())


@pytest.fixture
def scenes_copy(suggest_setup, tmp_path):
    """A copy of the scenes to damage."""
    copy = tmp_path / "scenes"
    shutil.copytree(suggest_setup.scenes, copy)
    return copy
