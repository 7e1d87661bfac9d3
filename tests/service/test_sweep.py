"""Sweeps end to end: real Ray Tune + Train on CPU, real sqlite MLflow."""

from __future__ import annotations

import pytest
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from pdml_ray.service.sweep import run_sweep, search_space
from tests.helpers import tiny_config

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep-scenes") / "synthetic"


def sweep_config(tmp_path, data_root, mlflow_uri, **sweep):
    return tiny_config(
        tmp_path, data_root, mlflow_uri,
        ray={"num_workers": 1, "cpus_per_worker": 0.5},  # two 1-worker trials at once
        train={"batch_size": 2, "epochs": 3},
        sweep={"name": "tiny-sweep", "thresholds": [0.6], **sweep})


def children(uri: str, parent_run_id: str):
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def test_search_space_grid_and_random(tmp_path, mlflow_uri):
    grid = sweep_config(tmp_path, tmp_path, mlflow_uri, margins=[8, 20], alphas=[0.4, 0.8])
    space = search_space(grid)
    assert space["loss.margin"] == {"grid_search": [8.0, 20.0]}
    assert space["loss.alpha"] == {"grid_search": [0.4, 0.8]}
    assert "loss.pdml_weight" not in space
    rand = grid.replace(**{"sweep.search": "random", "sweep.thresholds": [0.5, 0.9]})
    threshold = search_space(rand)["extension.threshold"]
    assert (threshold.lower, threshold.upper) == (0.5, 0.9)


def test_sweep_logs_trials_table_and_registers_best(ray_cluster, tmp_path, data_root, mlflow_uri):
    cfg = sweep_config(tmp_path, data_root, mlflow_uri, margins=[5.0, 20.0], scheduler="none")
    result = run_sweep(cfg)
    steps = cfg.data.synthetic_train // cfg.train.batch_size * cfg.train.epochs
    runs = children(mlflow_uri, result.parent_run_id)
    assert len(runs) == 2 == len(result.table)
    assert sorted(float(r.data.params["loss.margin"]) for r in runs) == [5.0, 20.0]
    assert {r.data.params["extension.threshold"] for r in runs} == {"0.6"}
    for run in runs:
        history = MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "val_miou")
        assert len(history) == 3  # one evaluation per epoch, none lost to sqlite contention
        assert len(MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "loss")) == steps
    table = download_artifacts(run_id=result.parent_run_id, artifact_path="sweep/results.md",
                               tracking_uri=mlflow_uri)
    text = open(table).read()
    assert text.startswith("| alpha | beta | m |") and text.count("completed") == 2
    assert download_artifacts(run_id=result.parent_run_id, tracking_uri=mlflow_uri,
                              artifact_path="sweep/val_miou_vs_margin_threshold.png")
    best = max(result.table, key=lambda r: r["val_miou"])
    assert result.registered is not None and result.registered.val_miou == pytest.approx(
        best["val_miou"], abs=1e-6)

    # Running the same sweep again restores it: finished trials are not rerun.
    again = run_sweep(cfg)
    assert again.parent_run_id == result.parent_run_id
    assert len(children(mlflow_uri, result.parent_run_id)) == 2
    for run in children(mlflow_uri, result.parent_run_id):
        assert len(MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "loss")) == steps


def test_asha_stops_a_trial_below_the_bar(ray_cluster, tmp_path, data_root, mlflow_uri):
    # One trial at a time, in grid order: the first sets the bar at each rung (it always
    # completes); the second is stopped at the first rung where its val mIoU is below.
    # Four epochs: rungs after evaluations 1 and 2, a full trial makes 4. Tune's stop
    # reaches the Train workers asynchronously, so a stopped trial may log one or two
    # more evaluations (seconds each here) before it is killed, never all four.
    cfg = sweep_config(tmp_path, data_root, mlflow_uri, margins=[20.0], max_concurrent_trials=1,
                       learning_rates=[1e-9, 3e-3], scheduler="asha", grace_period=1,
                       reduction_factor=2, name="asha-sweep")
    cfg = cfg.replace(**{"mlflow.register": False, "train.epochs": 4})
    result = run_sweep(cfg)
    client = MlflowClient(mlflow_uri)
    rows = sorted(result.table, key=lambda row: row["trial"])  # generation order
    first, second = ([m.value for m in client.get_metric_history(row["run_id"], "val_miou")]
                     for row in rows)
    assert rows[0]["status"] == "completed" and len(first) == 4
    # With these seeds the second trial is below the bar at the first rung (it is
    # deterministic on CPU); ASHA must then stop it before it completes.
    assert second[0] < first[0]
    assert rows[1]["status"] == "stopped early" and 1 <= len(second) < len(first)
    assert rows[1]["evaluations"] == len(second)
    assert client.get_run(rows[1]["run_id"]).info.status == "KILLED"
