"""The dis(+)/dis(-) recorder of the first and last epoch (no Ray; MLflow only where the
files are logged into a run)."""

from __future__ import annotations

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from pdml_ray.config import Config
from pdml_ray.losses import triplet_distances
from pdml_ray.mining import InBatchMiner, PointBatch
from pdml_ray.service.train.diagnostics import ARTIFACT_DIR, DistanceRecorder, Reservoir
from pdml_ray.service.tracking import MetricLogger


def points(seed: int) -> PointBatch:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (24,), generator=generator)
    batch_index = torch.arange(24) // 6  # 4 images of 6 points
    return PointBatch(torch.randn(24, 5, generator=generator), labels, batch_index + 100,
                      batch_index)


def test_reservoir_keeps_everything_below_capacity_and_a_uniform_sample_above():
    small = Reservoir(10, 1)
    small.add(np.arange(4)[:, None])
    small.add(np.arange(4, 7)[:, None])
    assert small.rows[:, 0].tolist() == list(range(7))

    sample = Reservoir(2_000, 1, seed=1)
    for start in range(0, 100_000, 5_000):
        sample.add(np.arange(start, start + 5_000)[:, None])
    assert sample.rows.shape == (2_000, 1) and sample.seen == 100_000
    # A uniform sample of 0..99999: mean near 50000, all quarters represented.
    assert abs(sample.rows.mean() - 50_000) < 2_500
    counts = np.histogram(sample.rows, bins=4, range=(0, 100_000))[0]
    assert counts.min() > 400


def test_recorder_watches_only_the_first_and_last_epoch_and_keeps_the_loss():
    cfg = Config().replace(**{"train.epochs": 5, "loss.subgroup_size": 2})
    recorder = DistanceRecorder.for_run(cfg, total_steps=50, steps_per_epoch=10)
    miner = InBatchMiner(cfg.loss)
    assert recorder.watch(miner, 2) is miner
    expected = {}
    for epoch in (0, 4):
        watched = recorder.watch(miner, epoch)
        assert watched is not miner and watched.stats == {}
        batch = points(epoch)
        torch.testing.assert_close(watched(batch, step=0).loss, miner(batch, step=0).loss)
        expected[f"epoch {epoch + 1}"] = triplet_distances(
            batch.embeddings, batch.labels, batch.image_ids, batch.batch_index // 2)
    recorded = recorder.distances()
    assert list(recorded) == ["epoch 1", "epoch 5"]
    for label, (pos, neg) in expected.items():
        np.testing.assert_allclose(recorded[label][0], pos.numpy(), rtol=1e-6)
        np.testing.assert_allclose(recorded[label][1], neg.numpy(), rtol=1e-6)


def test_max_steps_makes_an_earlier_epoch_the_last():
    cfg = Config().replace(**{"train.epochs": 10})
    assert DistanceRecorder.for_run(cfg, total_steps=25, steps_per_epoch=10).epochs == [0, 2]
    assert DistanceRecorder.for_run(cfg, total_steps=5, steps_per_epoch=10).epochs == [0]


def test_recorder_writes_the_plot_and_the_raw_values(tmp_path):
    cfg = Config().replace(**{"train.epochs": 2, "loss.subgroup_size": 2})
    recorder = DistanceRecorder(cfg, last_epoch=1)
    assert recorder.write(tmp_path) == []  # nothing seen, nothing written
    for epoch in (0, 1):
        recorder.watch(InBatchMiner(cfg.loss), epoch)(points(epoch), step=0)
    written = recorder.write(tmp_path)
    assert sorted(path.name for path in written) == ["distance_histograms.png",
                                                     "triplet_distances.npz"]
    arrays = np.load(tmp_path / "triplet_distances.npz")
    assert sorted(arrays.files) == ["neg_epoch_1", "neg_epoch_2", "pos_epoch_1", "pos_epoch_2"]
    np.testing.assert_array_equal(arrays["pos_epoch_2"], recorder.distances()["epoch 2"][0])


class StatsMiner(InBatchMiner):
    """An in-batch miner that, like the store miner, describes each call in ``stats``."""

    def __call__(self, points: PointBatch, *, step: int):
        self.stats = {"calls_at_step": float(step)}
        return super().__call__(points, step=step)


def test_the_recording_wrapper_passes_the_step_and_shows_the_miners_stats():
    cfg = Config().replace(**{"loss.subgroup_size": 2})
    watched = DistanceRecorder(cfg, last_epoch=0).watch(StatsMiner(cfg.loss), 0)
    watched(points(0), step=7)
    assert watched.stats == {"calls_at_step": 7.0}


def test_the_files_go_into_the_run(tmp_path, mlflow_uri):
    cfg = Config().replace(**{"loss.subgroup_size": 2})
    recorder = DistanceRecorder(cfg, last_epoch=0)
    recorder.watch(InBatchMiner(cfg.loss), 0)(points(0), step=0)
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("diagnostics",
                                          artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    recorder.log(MetricLogger(mlflow_uri, run_id))
    logged = sorted(entry.path for entry in client.list_artifacts(run_id, ARTIFACT_DIR))
    assert logged == [f"{ARTIFACT_DIR}/distance_histograms.png",
                      f"{ARTIFACT_DIR}/triplet_distances.npz"]


class FailingTracker:
    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        raise ConnectionError("tracking server down")


def test_a_tracking_outage_costs_the_plot_not_the_run(tmp_path, caplog):
    cfg = Config().replace(**{"loss.subgroup_size": 2})
    recorder = DistanceRecorder(cfg, last_epoch=0)
    recorder.watch(InBatchMiner(cfg.loss), 0)(points(0), step=0)
    recorder.log(FailingTracker())
    assert "could not log the distance histograms" in caplog.text
