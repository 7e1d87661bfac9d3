"""Ctrl-C during ``python -m jobs.train``: the job says how to resume and exits 130, the
workers stop without another step or checkpoint once the stop reaches them, the MLflow run
is KILLED, checkpoints beyond ray.keep_checkpoints are removed, and the printed command
resumes the run."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from jobs.train import resume_command
from pdml_ray.config import ConfigError, dump_config
from pdml_ray.service.train.checkpoint import RAY_SNAPSHOT_FILE, load_training_state
from pdml_ray.service.train.preflight import RUN_CONFIG_FILE, check_same_run
from pdml_ray.service.tracking import RUN_NAME_TAG, start_run
from tests.helpers import (job_env, kill_session, only_run, run_job, session_pids, start_job,
                           tiny_config, wait_for)

STEPS_PER_EPOCH = 4  # tiny_config: 16 train images, global batch 4
EPOCHS = 6  # the interrupted run


def test_resume_command_repeats_the_arguments_with_the_run_name_last():
    assert resume_command(["--config", "my job.yaml", "--set", "train.lr=0.1"], "pdml-1") == (
        "python -m jobs.train --config 'my job.yaml' --set train.lr=0.1 "
        "--set ray.run_name=pdml-1")
    # A name given before is the same name: it is said once, last.
    assert resume_command(["--set", "ray.run_name=mine", "--project-dir", "/p"], "mine") == (
        "python -m jobs.train --project-dir /p --set ray.run_name=mine")
    assert resume_command(["--set=ray.run_name=mine"], "mine") == (
        "python -m jobs.train --set ray.run_name=mine")


def test_a_run_started_without_a_name_resumes_under_the_name_it_was_given(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "synthetic", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert cfg.ray.run_name is None
    start_run(cfg, ray_run_name="pdml-20260101-000000-abcd")  # the driver's generated name
    check_same_run(cfg.replace(**{"ray.run_name": "pdml-20260101-000000-abcd"}))  # the line
    with pytest.raises(ConfigError, match=r"\(train.lr: 0.002 -> 0.01\)"):  # still checked
        check_same_run(cfg.replace(**{"ray.run_name": "pdml-20260101-000000-abcd",
                                      "train.lr": 0.01}))


def test_the_stop_ends_a_training_thread_before_its_next_step(monkeypatch, capsys):
    """StopStepsOnShutdown, as a Train worker runs it when the run is stopped, against a
    thread that steps and logs every millisecond: no step is logged after the moment the
    worker says the stop reached it, and the thread ends (without the callback it would
    train on until Train kills the worker)."""
    import ray.train.v2._internal.execution.context as train_context

    from pdml_ray.service.train.driver import StopStepsOnShutdown, TrainingStopped

    logged, running, ended = [], threading.Event(), []

    def optimizer_step() -> None:  # a Python call, as optimizer.step and tracker.log are
        logged.append(time.time())

    def training() -> None:
        while True:
            time.sleep(0.001)  # the forward and backward pass, in C++
            optimizer_step()
            running.set()

    monkeypatch.setattr(threading, "excepthook", lambda args: ended.append(args.exc_type))
    thread = threading.Thread(target=training, daemon=True)
    thread.start()
    assert running.wait(timeout=60)
    worker = SimpleNamespace(
        execution_context=SimpleNamespace(training_thread_runner=SimpleNamespace(_thread=thread)),
        get_world_rank=lambda: 0)
    monkeypatch.setattr(train_context, "get_train_context", lambda: worker)
    StopStepsOnShutdown().before_worker_shutdown()
    thread.join(timeout=60)  # a guard against a hang
    assert not thread.is_alive() and ended == [TrainingStopped]
    said = re.search(r"rank 0: the stop reached this worker at (\d+\.\d+) \(unix time\); its "
                     r"training stops before another step or checkpoint", capsys.readouterr().err)
    assert said is not None
    assert logged and max(logged) <= float(said[1])


def checkpoint_folders(run: Path) -> list[Path]:
    return sorted(path for path in run.glob("checkpoint_*") if path.is_dir())


def stop_reached_at(ray_tmpdir: str) -> dict[int, float]:
    """``{rank: unix time}`` at which the stop reached each Train worker still training,
    from the line ``StopStepsOnShutdown`` writes in the worker's Ray log as it ends it."""
    line = re.compile(r"rank (\d+): the stop reached this worker at (\d+\.\d+) \(unix time\)")
    reached = {}
    for path in Path(ray_tmpdir).glob("*/ray/session_*/logs/*"):
        if path.is_file() and path.suffix in (".err", ".out", ".log"):
            for match in line.finditer(path.read_text(errors="replace")):
                reached[int(match[1])] = float(match[2])
    return reached


def registered_checkpoints(run: Path) -> int:
    """How many checkpoints Ray Train has registered for the run so far."""
    try:
        return json.loads((run / RAY_SNAPSHOT_FILE).read_text())["current_report_index"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.ray
def test_ctrl_c_stops_the_job_prunes_checkpoints_and_says_how_to_resume(tmp_path, job_tmpdir):
    data_root = tmp_path / "synthetic"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Six epochs: the stop lands with epochs to go, while the workers train.
    cfg = tiny_config(tmp_path, data_root, mlflow_uri, train={"epochs": EPOCHS},
                      ray={"keep_checkpoints": 1}, mlflow={"register": False})
    config_file = tmp_path / "job.yaml"
    config_file.write_text(dump_config(cfg))
    args = ["--config", str(config_file), "--project-dir", str(tmp_path)]  # no run name
    storage, log = Path(cfg.ray.storage_path), tmp_path / "job.log"

    job = start_job(["jobs.train", *args], job_env(job_tmpdir), log)
    try:
        def two_checkpoints_registered():
            runs = list(storage.glob("*/")) if storage.is_dir() else []
            return any(registered_checkpoints(run) >= 2 for run in runs) or job.poll() is not None

        wait_for(two_checkpoints_registered, timeout_s=1500, what="two registered checkpoints")
        assert job.poll() is None, log.read_text()[-3000:]
        os.killpg(job.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        returncode = job.wait(timeout=600)  # a guard against a hang, not a speed claim
        # Workers stopped: the job's local Ray and its Train workers are gone with it.
        wait_for(lambda: not session_pids(job.pid), timeout_s=120,
                 what="the job's Ray processes to end")
    finally:
        kill_session(job)
    output = log.read_text()
    assert returncode == 130, output[-3000:]

    run = only_run(mlflow_uri, cfg.mlflow.experiment)
    assert run.info.status == "KILLED"
    run_name = run.data.tags[RUN_NAME_TAG]
    resume_lines = [line for line in output.splitlines() if line.startswith("interrupted")]
    expected = ("interrupted: resume with  python -m jobs.train "
                + shlex.join(args) + f" --set ray.run_name={run_name}")
    assert resume_lines == [expected], output[-3000:]
    assert "Traceback" not in output

    # No optimizer step after the stop reached the workers: rank 0 logs every step
    # (train.log_every_steps=1) as it is taken, and nothing was logged after that moment.
    # No checkpoint either: every file of the folders left was written before it.
    reached = stop_reached_at(job_tmpdir)
    assert 0 in reached, output[-3000:]
    stopped_at = min(reached.values())
    losses = MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "loss")
    assert losses and all(point.timestamp <= stopped_at * 1000 for point in losses), (
        stopped_at, sorted((point.step, point.timestamp) for point in losses)[-4:])
    written = [path.stat().st_mtime for folder in checkpoint_folders(storage / run_name)
               for path in folder.rglob("*")]
    assert written and max(written) <= stopped_at
    assert (storage / run_name / RUN_CONFIG_FILE).is_file()  # what a resume is checked against

    # At most ray.keep_checkpoints folders, and the one left is the newest registered.
    folders = checkpoint_folders(storage / run_name)
    assert len(folders) == 1, folders
    snapshot = json.loads((storage / run_name / RAY_SNAPSHOT_FILE).read_text())
    assert snapshot["latest_checkpoint_result"]["checkpoint_dir_name"] == folders[0].name
    assert [entry["checkpoint_dir_name"] for entry in snapshot["checkpoint_results"]] == [
        folders[0].name]
    interrupted_at = load_training_state(folders[0])["step"]
    assert 2 * STEPS_PER_EPOCH <= interrupted_at <= max(point.step for point in losses)

    # The printed command resumes the run: the same MLflow run, trained to the end.
    resumed = run_job(*shlex.split(expected.split("  ", 1)[1])[2:], env=job_env(job_tmpdir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = only_run(mlflow_uri, cfg.mlflow.experiment)
    assert run.info.status == "FINISHED"
    steps = [metric.step for metric in MlflowClient(mlflow_uri).get_metric_history(
        run.info.run_id, "val_miou")]
    assert max(steps) == EPOCHS * STEPS_PER_EPOCH
    assert len(checkpoint_folders(storage / run_name)) <= 2  # Ray's own rule again
