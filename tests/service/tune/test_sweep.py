"""Sweeps end to end: real Ray Tune + Train on CPU, real sqlite MLflow."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from pdml_ray.config import ConfigError, dump_config
from pdml_ray.service.tune.sweep import concurrent_trials, run_sweep, search_space
from pdml_ray.service.tune.results import results_table
from pdml_ray.service.tracking import end_run, start_run
from tests.helpers import (job_env, kill_session, run_job, start_job, tiny_config,
                           wait_for)


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


def test_results_table_tells_stopped_trials_from_failed_ones(tmp_path, mlflow_uri):
    # Four trials of a 3-evaluation sweep, as their MLflow runs are left: one finished all
    # evaluations; one was killed before closing its run (RUNNING); one got the stop as an
    # exception (FAILED) but Tune ended it without an error; one really failed.
    cfg = sweep_config(tmp_path, tmp_path, mlflow_uri, name="status-sweep")
    client = MlflowClient(mlflow_uri)
    runs = {}
    for trial, evaluations, end in (("t0", 3, "finished"), ("t1", 1, None),
                                    ("t2", 2, "failed"), ("t3", 1, "failed")):
        run_id = start_run(cfg, ray_run_name=f"status-sweep-{trial}",
                           tags={"pdml.sweep": "status-sweep", "pdml.trial_id": trial})
        for step in range(evaluations):
            client.log_metric(run_id, "val_miou", 0.1 * (step + 1), step=step)
        if end is not None:
            end_run(mlflow_uri, run_id, failed=end == "failed")
        runs[trial] = run_id
    rows = {row["trial"]: row for row in results_table(cfg, "status-sweep",
                                                        ended_cleanly={"t0", "t1", "t2"})}
    assert {t: (r["status"], r["evaluations"]) for t, r in rows.items()} == {
        "t0": ("completed", 3), "t1": ("stopped early", 1), "t2": ("stopped early", 2),
        "t3": ("failed", 1)}
    status = {t: client.get_run(run_id).info.status for t, run_id in runs.items()}
    assert status == {"t0": "FINISHED", "t1": "KILLED", "t2": "KILLED", "t3": "FAILED"}


@pytest.mark.ray
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

    csv_path = download_artifacts(run_id=result.parent_run_id, artifact_path="sweep/results.csv",
                                  tracking_uri=mlflow_uri)
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(float(row["margin"]) for row in rows) == [5.0, 20.0]
    assert {row["status"] for row in rows} == {"completed"}


def test_concurrent_trials_follow_the_cluster(tmp_path, mlflow_uri):
    cpu = sweep_config(tmp_path, tmp_path, mlflow_uri).replace(**{
        "ray.num_workers": 2, "ray.cpus_per_worker": 1.0, "train.batch_size": 4})
    assert concurrent_trials(cpu, {"CPU": 8.0}) == 3  # 2.01 CPUs per trial
    assert concurrent_trials(cpu, {"CPU": 1.0}) is None  # none fits yet: let Tune queue them
    gpu = cpu.replace(**{"ray.use_gpu": True})
    assert concurrent_trials(gpu, {"CPU": 64.0, "GPU": 4.0}) == 2
    # An autoscaling cluster before its GPU nodes exist: no cap, pending trials scale it.
    assert concurrent_trials(gpu, {"CPU": 8.0}) is None
    assert concurrent_trials(gpu.replace(**{"sweep.max_concurrent_trials": 1}), {"CPU": 8.0}) == 1


@pytest.mark.ray
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


# -- an interrupted sweep, resumed from the command line ----------------------------------
def finished_trials(sweep_folder: Path) -> int:
    """Trials Tune has recorded as TERMINATED in its experiment state (what a restore
    keeps); 0 while no state file is readable."""
    done = 0
    for state_file in sweep_folder.glob("experiment_state-*.json"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):  # being rewritten
            continue
        done = max(done, sum(json.loads(trial)["status"] == "TERMINATED"
                             for trial, _ in state["trial_data"]))
    return done


@pytest.mark.ray
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_cluster, tmp_path,
                                                                     data_root, job_tmpdir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = sweep_config(tmp_path, data_root, uri, margins=[5.0, 20.0], scheduler="none",
                       max_concurrent_trials=1, name="interrupted")
    cfg = cfg.replace(**{"train.epochs": 2})
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text(dump_config(cfg))
    args = ["tuning.sweep", "--config", str(config_file), "--project-dir", str(tmp_path)]
    steps = cfg.data.synthetic_train // cfg.train.batch_size * cfg.train.epochs

    first = start_job(args, job_env(job_tmpdir), tmp_path / "first.log")
    try:
        wait_for(lambda: finished_trials(Path(cfg.ray.storage_path) / "interrupted")
                 or first.poll() is not None, timeout_s=900, what="the first finished trial")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        kill_session(first)  # the sweep's driver and its local Ray, mid-way

    second = run_job(*args, env=job_env(job_tmpdir))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming sweep interrupted" in second.stderr
    # The results table, printed: both trials completed.
    table = [line for line in second.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| alpha | beta | m |") and len(table) == 3
    assert all("| completed |" in line for line in table[1:])

    client = MlflowClient(uri)
    parents = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment)
                                  .experiment_id], filter_string="tags.`pdml.role` = 'sweep'")
    assert len(parents) == 1  # the resumed sweep continued its parent run
    trials = children(uri, parents[0].info.run_id)
    assert len(trials) == 2
    histories = sorted(([m.step for m in client.get_metric_history(run.info.run_id, "loss")]
                        for run in trials), key=len)
    # The trial that had finished was not trained again: each step logged once. The one
    # that was cut off resumed from its checkpoint: every step there, a few maybe twice.
    assert histories[0] == list(range(1, steps + 1))
    assert set(histories[1]) == set(range(1, steps + 1))
    assert len(client.search_model_versions("name = 'pdml-scene-parser'")) == 1

    # Resuming it with other settings is refused, naming them.
    with pytest.raises(ConfigError, match=r"sweep 'interrupted' was started with other "
                                          r"settings \(train\.epochs: 2 -> 3\)"):
        run_sweep(cfg.replace(**{"train.epochs": 3}))
