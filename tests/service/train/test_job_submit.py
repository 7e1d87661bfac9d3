"""The README's cluster path, for real: ``ray start --head``, then ``ray job submit
--working-dir . -- python -m jobs.train --project-dir DIR``, with token authentication.

The job runs in Ray's temporary copy of the repository; what it writes (data, checkpoints,
the MLflow store, the registered model) must land in the project folder the user named.
The head is started in a process session of its own and that session is killed at the
end: ``ray stop`` would stop every Ray on the machine, other test sessions' included.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pdml_ray.config import dump_config, from_dict
from tests.helpers import REPO, job_env, kill_session, only_run, tiny_config, wait_for

pytestmark = pytest.mark.ray

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def head_node(job_tmpdir):
    """A ``ray start --head --block`` cluster of 2 CPUs on free ports; yields the job
    server's address and the environment a client needs to reach it."""
    dashboard, gcs, agent = free_port(), free_port(), free_port()
    # `python` in a job is the one on the head's PATH: this environment's, as after
    # `source .venv/bin/activate` in the README.
    env = {**job_env(job_tmpdir), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token"}
    log = Path(job_tmpdir) / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2",
             "--port", str(gcs), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(agent),
             "--disable-usage-stats"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        def job_server_ready() -> bool:
            assert head.poll() is None, log.read_text()[-3000:]
            listed = subprocess.run([str(VENV_BIN / "ray"), "job", "list", "--address", address],
                                    env=env, capture_output=True, text=True, timeout=60)
            return listed.returncode == 0

        wait_for(job_server_ready, timeout_s=180, what="the head's job server")
        yield address, env
    finally:
        kill_session(head)


def test_ray_job_submit_trains_into_the_project_folder(head_node, tmp_path):
    address, env = head_node
    project = tmp_path / "project"
    project.mkdir()
    raw = tiny_config(tmp_path, tmp_path, None, train={"epochs": 1},
                      ray={"run_name": "submitted"}).to_dict()
    # Relative paths and the default MLflow store: the job must anchor them at
    # --project-dir, not at the temporary copy of the repository it runs in.
    raw["data"].update(root="data/synthetic", points_file=None)
    raw["ray"]["storage_path"] = "ray_results"
    raw["mlflow"].update(tracking_uri=None, artifact_location=None)
    cfg = from_dict(raw)
    config_file = tmp_path / "job.yaml"
    config_file.write_text(dump_config(cfg))

    submitted = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", address, "--working-dir",
         str(REPO), "--", "python", "-m", "jobs.train", "--config", str(config_file),
         "--project-dir", str(project)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-4000:]
    assert "succeeded" in submitted.stdout

    uri = f"sqlite:///{project / 'mlflow.db'}"
    run = only_run(uri, cfg.mlflow.experiment)
    assert run.info.status == "FINISHED" and run.data.params["loss.margin"] == "5.0"
    assert f"MLflow run     {run.info.run_id} in {uri}" in submitted.stdout
    assert (project / "data" / "synthetic" / "points_train.parquet").is_file()
    assert any((project / "ray_results" / "submitted").glob("checkpoint_*"))
    version = MlflowClient(uri).get_model_version_by_alias("pdml-scene-parser", "champion")
    assert version.run_id == run.info.run_id
    assert any(path.name == "MLmodel" for path in (project / "mlartifacts").rglob("*"))
