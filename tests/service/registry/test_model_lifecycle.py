"""After one real tiny training run on Ray: the dis(+)/dis(-) histograms it logged, and
what its users do next: ``jobs.registry show``, ``jobs.evaluate`` with its report, and
loading the model by run URI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pdml_ray.config import dump_config
from pdml_ray.service.train.driver import run_training
from pdml_ray.service.registry.evaluate import EVALUATED_MODEL_TAG, log_evaluation
from pdml_ray.service.registry.load import load_scene_parser
from pdml_ray.service.registry.model_uri import resolve_model_version
from tests.helpers import run_job
from tests.helpers import tiny_config

pytestmark = pytest.mark.ray

CHAMPION = "models:/pdml-scene-parser@champion"


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """The module's one training run (2 epochs, 1 worker), registered as @champion; and
    its config written to a YAML file, as a user would keep it."""
    folder = tmp_path_factory.mktemp("lifecycle")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg = tiny_config(folder, folder / "synthetic", uri, train={"epochs": 2},
                      ray={"num_workers": 1, "run_name": "lifecycle"})
    result = run_training(cfg)
    config_file = folder / "config.yaml"
    config_file.write_text(dump_config(cfg))
    return cfg, result, config_file


def test_training_logged_the_distance_histograms(trained):
    cfg, result, _ = trained
    client = MlflowClient(cfg.mlflow.tracking_uri)
    logged = {item.path for item in client.list_artifacts(result.mlflow_run_id, "diagnostics")}
    assert logged == {"diagnostics/distance_histograms.png", "diagnostics/triplet_distances.npz"}
    path = client.download_artifacts(result.mlflow_run_id, "diagnostics/triplet_distances.npz")
    arrays = np.load(path)
    assert sorted(arrays.files) == ["neg_epoch_1", "neg_epoch_2", "pos_epoch_1", "pos_epoch_2"]
    for values in arrays.values():
        assert values.size > 0 and np.isfinite(values).all() and values.min() >= 0


def test_show_describes_the_champion(trained):
    cfg, result, config_file = trained
    shown = run_job("jobs.registry", "show", CHAMPION, "--config", str(config_file))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "models:/pdml-scene-parser/1  (@champion)" in out
    assert result.mlflow_run_id in out and "lifecycle" in out
    assert f"val mIoU   {result.best_val_miou:.4f}" in out
    assert "backbone=resnet18" in out and "supervision=point+pdml+ext" in out
    assert "margin=5.0" in out and "threshold=0.7" in out
    for name, iou in zip(("sky", "ground", "kite"), np.asarray(result.per_class_iou)[[0, 1, 7]]):
        assert any(line.split()[:2] == [name, "-" if np.isnan(iou) else f"{iou:.4f}"]
                   for line in out.splitlines()), name


def test_evaluate_writes_the_report_and_logs_it(trained, tmp_path):
    cfg, result, config_file = trained
    report = tmp_path / "report"
    evaluated = run_job("jobs.evaluate", "--model", CHAMPION, "--config", str(config_file),
                        "--report", str(report), "--grid-images", "3")
    assert evaluated.returncode == 0, evaluated.stderr
    assert sorted(path.name for path in report.iterdir()) == [
        "confusion_matrix.png", "per_class_iou.csv", "per_class_iou.md", "predictions.png"]
    rows = dict(csv.reader((report / "per_class_iou.csv").open()))
    # The same weights on the same images as the training run's own validation.
    assert float(rows["mIoU"]) == pytest.approx(result.best_val_miou, abs=1e-4)
    assert "| sky | ground |" in (report / "per_class_iou.md").read_text()

    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    (run,) = client.search_runs([experiment],
                                filter_string=f"tags.`{EVALUATED_MODEL_TAG}` = '{CHAMPION}'")
    assert run.info.run_id in evaluated.stdout
    assert run.data.tags["pdml.evaluated_version"] == "1"
    assert run.data.metrics["eval_miou"] == pytest.approx(float(rows["mIoU"]), abs=1e-6)
    logged = {item.path for item in client.list_artifacts(run.info.run_id, "evaluation")}
    assert logged == {f"evaluation/{path.name}" for path in report.iterdir()}


def test_load_by_run_uri_and_log_into_the_model_run(trained, tmp_path):
    cfg, result, _ = trained
    uri = f"runs:/{result.mlflow_run_id}/model"
    loaded = load_scene_parser(cfg.mlflow.tracking_uri, uri, device="cpu")
    assert str(loaded.version.version) == "1" and loaded.run_id == result.mlflow_run_id
    assert loaded.metadata["classes"] == list(loaded.parser.classes)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    assert resolve_model_version(client, uri).version == loaded.version.version

    report = tmp_path / "eval-by-hand"
    report.mkdir()
    (report / "note.md").write_text("scores\n")
    scores = {"miou": 0.25, "pixel_acc": 0.5, "per_class_iou": [0.25] * 8}
    run_id = log_evaluation(cfg, loaded, report_dir=report, scores=scores, params={},
                            to_model_run=True)
    assert run_id == result.mlflow_run_id
    assert client.get_run(run_id).data.metrics["eval_miou"] == 0.25
    logged = [item.path for item in client.list_artifacts(run_id, "evaluation/eval-by-hand")]
    assert logged == ["evaluation/eval-by-hand/note.md"]
