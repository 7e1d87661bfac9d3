"""Bad input to ``python -m jobs.suggest`` ends in one ``error:`` line, before any Ray
starts (``run_job`` fails a test whose job starts one)."""

from __future__ import annotations

import re

from pdml_ray.data import write_points
from tests.helpers import run_job


def suggest(setup, *args: str, root=None, points=None):
    points = setup.points if points is None else points
    return run_job("jobs.suggest", "--dataset", "synthetic", "--root", str(root or setup.scenes),
                   "--split", "train", "--points", str(points),
                   "--out", str(setup.folder / "never.csv"),
                   "--set", f"mlflow.tracking_uri={setup.uri}", *args, timeout_s=300)


def error_line(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unknown_model(suggest_setup):
    line = error_line(suggest(suggest_setup, "--model", "models:/pdml-scene-parser@nobody",
                              "--budget", "5"))
    assert re.fullmatch(r"error: .*pdml-scene-parser.*nobody.*", line), line


def test_points_of_another_dataset(suggest_setup, tmp_path):
    other = tmp_path / "ade_points.parquet"
    write_points(other, [("ADE_train_00000001", 3, 4, 12)],
                 {"dataset": "ade20k", "split": "train"})
    line = error_line(suggest(suggest_setup, "--budget", "5", points=other))
    assert line == f"error: {other}: points of the ade20k dataset, not of synthetic"


def test_points_of_images_the_split_does_not_have(suggest_setup, tmp_path):
    other = tmp_path / "other_points.parquet"
    write_points(other, [("street_7", 3, 4, 1)])
    line = error_line(suggest(suggest_setup, "--budget", "5", points=other))
    assert re.fullmatch(rf"error: {re.escape(str(other))}: 1 image id\(s\) not in the synthetic "
                        rf"train split at .*: street_7", line), line


def test_budget_below_one(suggest_setup):
    line = error_line(suggest(suggest_setup, "--budget", "0"))
    assert line == "python -m jobs.suggest: error: argument --budget: must be >= 1, got 0"


def test_an_image_without_its_label_map(suggest_setup, scenes_copy):
    label = scenes_copy / "annotations" / "training" / "synthetic_train_00003.png"
    label.unlink()
    line = error_line(suggest(suggest_setup, "--budget", "5", root=scenes_copy))
    assert line.startswith("error: ") and "synthetic_train_00003" in line, line
    assert "label map" in line, line


def test_a_label_map_without_its_image(suggest_setup, scenes_copy):
    image = scenes_copy / "images" / "training" / "synthetic_train_00001.jpg"
    image.unlink()
    line = error_line(suggest(suggest_setup, "--budget", "5", root=scenes_copy))
    assert line == (f"error: {image}: image not found (its label map synthetic_train_00001.png "
                    f"exists)")


def test_a_model_of_another_dataset(suggest_setup, tmp_path):
    """Checked in this process: the round stops before any Ray is started."""
    import pytest

    from pdml_ray.config import ConfigError, from_dict, resolve_paths
    from pdml_ray.models import build_model
    from pdml_ray.service.infer.round import SuggestRequest, suggest_round
    from pdml_ray.service.registry.register import log_and_register
    from pdml_ray.service.tracking import start_run

    cfg = resolve_paths(from_dict({
        "data": {"dataset": "ade20k"},
        "model": {"backbone": "resnet18", "pretrained": None, "head": "linear"},
        "mlflow": {"tracking_uri": suggest_setup.uri, "experiment": "other",
                   "artifact_location": str(tmp_path / "artifacts"),
                   "registered_model": "ade-parser"}}), tmp_path)
    model = build_model(num_classes=150, backbone="resnet18", head="linear")
    log_and_register(cfg, run_id=start_run(cfg, ray_run_name="ade"), state_dict=model.state_dict(),
                     val_miou=0.1)
    request = SuggestRequest(model_uri="models:/ade-parser@champion", dataset="synthetic",
                             root=suggest_setup.scenes, split="train", points=None, budget=3,
                             out=tmp_path / "s.csv", tracking_uri=suggest_setup.uri)
    with pytest.raises(ConfigError, match=r"^--dataset synthetic: model models:/ade-parser@champion "
                                          r"was trained on ade20k \(150 classes\)$"):
        suggest_round(request, say=lambda line: None)
    assert not (tmp_path / "s.csv").exists()
