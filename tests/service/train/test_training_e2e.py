"""End-to-end: real local Ray (2 CPU workers), real sqlite MLflow, tiny synthetic scenes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray
from PIL import Image
from ray.util.state import list_actors
from mlflow.tracking import MlflowClient

from mlflow.artifacts import download_artifacts

from pdml_ray.config import load_config
from pdml_ray.data.synthetic import SYNTHETIC_CLASSES
from pdml_ray.engine import poly_lr
from pdml_ray.service.train.checkpoint import CHECKPOINT_FILE, load_training_state
from pdml_ray.service.train.driver import run_training
from pdml_ray.service.train.phases import PHASES
from pdml_ray.service.train.store import STORE_NAMESPACE, store_actor_name
from pdml_ray.service.tracking import tracking_uri_scope
from tests.helpers import run_beside, tiny_config, wait_for

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("scenes") / "synthetic"


def run_after(uri: str, result):
    return MlflowClient(uri).get_run(result.mlflow_run_id)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def test_train_resume_register_and_predict(ray_cluster, tmp_path, data_root, mlflow_uri,
                                           capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    cfg = tiny_config(tmp_path, data_root, mlflow_uri, ray={"run_name": "e2e-resume"})
    first = run_training(cfg, console=True)

    # The driver printed one line per epoch, from rank 0's reports only.
    printed = capsys.readouterr().out.splitlines()
    epochs = [line for line in printed if line.startswith("epoch ") and "val mIoU" in line]
    assert [line.split("  ")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert re.fullmatch(r"epoch 1/3  val mIoU \d\.\d{3} \(best \d\.\d{3} @1\)  "
                        r"pixel acc \d\.\d{3}  \d+ (s|min)/epoch  ~\d+ (s|min) left", epochs[0])
    assert f"(best {first.best_val_miou:.3f} @" in epochs[-1]

    # A private local cluster starts no preemption watcher: its nodes are never drained.
    classes = {actor.class_name for actor in list_actors(limit=1000)}
    assert "TrainController" in classes and "PreemptionWatcher" not in classes

    # A checkpoint holding the model was written; MLflow has params and metrics.
    assert (Path(first.checkpoint_path) / CHECKPOINT_FILE).is_file()
    run = MlflowClient(mlflow_uri).get_run(first.mlflow_run_id)
    config_text = download_artifacts(run_id=first.mlflow_run_id, artifact_path="config.yaml",
                                     tracking_uri=mlflow_uri)
    assert load_config(config_text) == cfg  # the logged file reproduces the run's config
    assert run.data.params["loss.margin"] == "5.0"
    assert run.data.params["extension.threshold"] == "0.7"
    # Left unset, the extension's weight is logged as the run used it (4 from random init).
    assert cfg.extension.weight is None and run.data.params["extension.weight"] == "4.0"
    for key in ("loss", "loss_ce", "loss_pdml", "dis_pos", "dis_neg", "lr", "images_per_s",
                "val_miou", "val_pixel_acc", "ext_accuracy", "system/cpu_utilization_percentage"):
        assert key in run.data.metrics, key
    assert run.info.run_name == "point+pdml+ext e2e-resume"
    assert run.data.tags["pdml.supervision"] == "point+pdml+ext"
    losses = [value for _, value in metric_history(mlflow_uri, first.mlflow_run_id, "loss")]
    assert len(losses) == 12  # 3 epochs x 4 steps, logged every step
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # the loss falls
    evaluations = metric_history(mlflow_uri, first.mlflow_run_id, "val_miou")
    assert first.best_val_miou == max(value for _, value in evaluations)
    assert_miou_is_the_mean_of_the_logged_class_ious(mlflow_uri, first.mlflow_run_id)
    # One per-class IoU table per epoch; its classes average to that epoch's val mIoU.
    tables = MlflowClient(mlflow_uri).list_artifacts(first.mlflow_run_id, "per_class_iou")
    assert [t.path for t in tables] == [f"per_class_iou/epoch_00{e}.md" for e in (1, 2, 3)]
    table = Path(download_artifacts(run_id=first.mlflow_run_id, tracking_uri=mlflow_uri,
                                    artifact_path="per_class_iou/epoch_003.md")).read_text()
    rows = [line.strip("|").split("|") for line in table.splitlines()[2:]]
    ious = [float(iou) for _, iou in rows]
    assert [name.strip() for name, _ in rows] == list(SYNTHETIC_CLASSES)
    val_miou = max(metric_history(mlflow_uri, first.mlflow_run_id, "val_miou"))[1]  # last epoch
    assert abs(np.nanmean(ious) - val_miou) < 1e-3  # rounded to 4 decimals in the table
    # ... and the same per-class IoU as metrics, one per class, at every evaluation's step.
    eval_steps = [step for step, _ in metric_history(mlflow_uri, first.mlflow_run_id, "val_miou")]
    for name, iou in zip(SYNTHETIC_CLASSES, ious):
        history = metric_history(mlflow_uri, first.mlflow_run_id, f"val_iou/{name}")
        assert {step for step, _ in history} <= set(eval_steps)  # NaN (class absent): none
        if not np.isnan(iou):
            assert history[-1][0] == eval_steps[-1] and abs(history[-1][1] - iou) < 1e-4
    # Every evaluation drew the same 4 validation images: image | truth | prediction.
    images = [a.path for a in MlflowClient(mlflow_uri).list_artifacts(first.mlflow_run_id,
                                                                      "images")]
    pngs = sorted((int(path.split("+")[2]), path) for path in images if path.endswith(".png"))
    assert [step for step, _ in pngs] == eval_steps
    grid = np.asarray(Image.open(download_artifacts(run_id=first.mlflow_run_id,
                                                    artifact_path=pngs[-1][1],
                                                    tracking_uri=mlflow_uri)))
    assert grid.shape[:2] == (4 * 128 + 3 * 2, 3 * 128 + 2 * 2)  # 4 rows of 48 px scenes

    # Where the time went: every phase logged once, the job's returned split the same.
    timed = {key: value for key, value in run_after(mlflow_uri, first).data.metrics.items()
             if key.startswith("time/")}
    assert set(timed) == {f"time/{p}_s" for p in PHASES}
    assert all(value > 0 for value in timed.values())
    assert first.phase_seconds["startup"] == timed["time/startup_s"]
    assert first.phase_seconds["registration"] == timed["time/registration_s"]
    for phase in ("steps", "evaluation", "checkpointing", "logging"):  # the workers' own
        assert first.phase_seconds[phase] == timed[f"time/{phase}_s"]

    # The registered model loads by alias and predicts at a size never seen in training.
    assert first.registered is not None and first.registered.is_champion
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the driver left no global behind
    with tracking_uri_scope(mlflow_uri):
        model = mlflow.pyfunc.load_model("models:/pdml-scene-parser@champion")
    image = np.random.default_rng(0).integers(0, 256, (2, 37, 61, 3), dtype=np.uint8)
    prediction = model.predict(image)
    assert prediction.shape == (2, 37, 61) and prediction.dtype == np.int64
    assert prediction.min() >= 0 and prediction.max() < 8

    # Same run name, more epochs: Ray resumes from the checkpoint into the same MLflow run.
    longer = cfg.replace(**{"train.epochs": 4})
    second = run_training(longer)
    assert second.mlflow_run_id == first.mlflow_run_id
    steps = [step for step, _ in metric_history(mlflow_uri, first.mlflow_run_id, "loss")]
    assert steps[:12] == list(range(1, 13))
    assert steps[12:] == [13, 14, 15, 16]  # continued at step 13, not restarted from 1


def assert_miou_is_the_mean_of_the_logged_class_ious(uri: str, run_id: str) -> None:
    """At every evaluation, val_miou is the mean of that step's val_iou/<class> metrics
    (classes absent from truth and prediction are logged as none, and averaged as none)."""
    by_step: dict[int, list[float]] = {}
    for name in SYNTHETIC_CLASSES:
        for step, iou in metric_history(uri, run_id, f"val_iou/{name}"):
            by_step.setdefault(step, []).append(iou)
    evaluations = metric_history(uri, run_id, "val_miou")
    assert sorted(by_step) == [step for step, _ in evaluations]
    for step, miou in evaluations:
        assert np.mean(by_step[step]) == pytest.approx(miou, abs=1e-9), step


STEPS_PER_EPOCH = 4  # tiny_config: 16 train images, global batch 4
MAX_STEPS = 14  # within the 4th of 4 epochs


@pytest.fixture(scope="module")
def store_run(ray_cluster, tmp_path_factory, data_root):
    """One run read by several tests: EmbeddingStore mining, sharded by worker (2 shards
    for 2 workers), with rank 0's shard killed (and restarted by Ray, empty) once it is in
    use; evaluated every 2nd epoch; stopped by ``train.max_steps`` two steps into its 4th
    epoch. Returns (config, result, killer's report: the ranks each shard held)."""
    folder = tmp_path_factory.mktemp("e2e_store")
    cfg = tiny_config(folder, data_root, f"sqlite:///{folder / 'mlflow.db'}",
                      loss={"mining": "global+store", "store_capacity": 64, "store_samples": 32,
                            "store_shards": 2},
                      train={"epochs": 4, "eval_every_epochs": 2, "max_steps": MAX_STEPS},
                      ray={"run_name": "e2e-store"}, mlflow={"register": False})
    killed = {}

    def used_store():
        try:
            store = ray.get_actor(store_actor_name("e2e-store"), namespace=STORE_NAMESPACE)
        except ValueError:  # not created yet
            return None
        try:
            pushes = ray.get(store.stats.remote(), timeout=5)["pushes"]
        except ray.exceptions.RayError:  # starting, or busy beyond the timeout: ask again
            return None
        return store if pushes >= 4 else None

    def kill_store_once_used(done):
        store = wait_for(used_store, timeout_s=600, what="4 pushes to the store", stop=done)
        try:
            killed["ranks"] = [sorted(set(ray.get(ray.get_actor(
                store_actor_name("e2e-store", shard), namespace=STORE_NAMESPACE).sample.remote(
                    64, step=10**6, max_staleness=10**7), timeout=30)["ranks"].tolist()))
                for shard in (0, 1)]
        except ray.exceptions.RayError as exc:
            killed["ranks"] = repr(exc)
        ray.kill(store, no_restart=False)  # Ray restarts it, empty
        killed["at"] = True

    result, failure = run_beside(kill_store_once_used, lambda: run_training(cfg),
                                 join_timeout_s=30)
    if failure is not None:
        killed["error"] = failure
    return cfg, result, killed


def test_killed_store_does_not_fail_the_run(store_run):
    cfg, result, killed = store_run
    uri = cfg.mlflow.tracking_uri
    assert "at" in killed, killed.get("error")
    assert killed["ranks"] == [[0], [1]]  # each worker's points in its own shard
    history = dict(metric_history(uri, result.mlflow_run_id, "store_hit"))
    assert max(history.values()) > 0  # store triplets were used
    failures = [v for _, v in metric_history(uri, result.mlflow_run_id, "store_failures")]
    restarts = [v for _, v in metric_history(uri, result.mlflow_run_id, "store_restarts")]
    assert max(failures + restarts) > 0  # the outage was noticed and logged
    assert len(metric_history(uri, result.mlflow_run_id, "loss")) == MAX_STEPS  # all steps ran


def test_evaluations_follow_eval_every_epochs_and_training_stops_at_max_steps(store_run):
    cfg, result, _ = store_run
    uri, run_id = cfg.mlflow.tracking_uri, result.mlflow_run_id
    assert [step for step, _ in metric_history(uri, run_id, "loss")] == list(
        range(1, MAX_STEPS + 1))
    # Epoch 2 (every 2nd epoch), then the last epoch trained, cut short by max_steps.
    assert [step for step, _ in metric_history(uri, run_id, "val_miou")] == [
        2 * STEPS_PER_EPOCH, MAX_STEPS]
    tables = MlflowClient(uri).list_artifacts(run_id, "per_class_iou")
    assert [t.path for t in tables] == ["per_class_iou/epoch_002.md", "per_class_iou/epoch_004.md"]
    # The poly schedule ends at max_steps, not at epochs x steps: the lr logged after
    # step s is the one step s trained with, poly_lr(lr, s - 1, MAX_STEPS, power).
    lrs = metric_history(uri, run_id, "lr")
    assert [value for _, value in lrs] == pytest.approx(
        [poly_lr(cfg.train.lr, step - 1, MAX_STEPS, cfg.train.poly_power) for step, _ in lrs])
    # A checkpoint at each evaluation, the last one at max_steps.
    states = [load_training_state(folder) for folder in
              (Path(cfg.ray.storage_path) / "e2e-store").glob("checkpoint_*") if folder.is_dir()]
    assert sorted((s["step"], s["epoch"]) for s in states) == [(8, 2), (MAX_STEPS, 4)]
    assert_miou_is_the_mean_of_the_logged_class_ious(uri, run_id)
