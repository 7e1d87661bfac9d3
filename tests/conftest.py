"""Shared fixtures. Ray and MLflow files stay in temporary folders; every Ray cluster
a test starts is shut down."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests choose their own store
os.environ.pop("RAY_ADDRESS", None)  # tests never attach to a user's cluster
# Ray 2.60 turns token authentication on and, without a token, writes a new one to
# ~/.ray/auth_token; a per-session token in the environment (inherited by every job a
# test starts) keeps the home folder untouched. Matplotlib's font cache likewise.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
if "MPLCONFIGDIR" not in os.environ:
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="pdml-mpl-")
    atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], True)


def pytest_collection_modifyitems(config, items):
    """The ``ray`` marker is how ``-m "not ray"`` leaves out the slow tests: a test that
    uses the session's Ray cluster without it is refused at collection."""
    unmarked = [item.nodeid for item in items
                if "ray_cluster" in getattr(item, "fixturenames", ())
                and item.get_closest_marker("ray") is None]
    if unmarked:
        raise pytest.UsageError("tests using the ray_cluster fixture must be marked "
                                "@pytest.mark.ray: " + ", ".join(unmarked))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # helpers.run_job checks that a job run by a test without the marker starts no Ray.
    from tests import helpers  # here, not at the top: after this file has set the environment

    helpers.CURRENT_TEST["ray"] = item.get_closest_marker("ray") is not None


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray (2 CPUs) for all end-to-end tests of a session, with its files
    in a private temporary folder that is removed afterwards."""
    import ray

    from pdml_ray.service.runtime import start_local_ray

    previous = os.environ.get("RAY_TMPDIR")
    # A short base: Ray's unix sockets live below it (~107 byte path limit).
    os.environ["RAY_TMPDIR"] = base = tempfile.mkdtemp(prefix="pdmlray-", dir="/tmp")
    start_local_ray(num_cpus=2, runtime_env={"env_vars": {
        "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}})
    yield ray
    ray.shutdown()
    if previous is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = previous
    if not os.environ.get("PDML_KEEP_RAY_TMP"):  # set it to read a failed run's Ray logs
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def corrupt_jpeg_run(ray_cluster, tmp_path_factory):
    """One training run (``ray.max_failures=2``) on scenes whose train image 5 is a JPEG
    with a valid header and a truncated body: only decoding finds it, in a Train worker.
    Shared by the tests of what becomes of such a run. Returns its config, the file, the
    exception ``run_training`` raised and how many Train workers were started for it."""
    from types import SimpleNamespace

    from ray.util.state import list_actors

    from pdml_ray.data import ensure_synthetic
    from pdml_ray.service.train.driver import run_training
    from tests.helpers import tiny_config

    def train_workers_started() -> int:
        return len(list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=10_000,
                               raise_on_missing_output=False))

    folder = tmp_path_factory.mktemp("corrupt_jpeg")
    cfg = tiny_config(folder, folder / "synthetic", f"sqlite:///{folder / 'mlflow.db'}",
                      train={"epochs": 1}, ray={"run_name": "corrupt-jpeg", "max_failures": 2},
                      mlflow={"register": False})
    ensure_synthetic(cfg.data)
    image = os.path.join(cfg.data.root, "images", "training", "synthetic_train_00005.jpg")
    with open(image, "rb") as file:
        data = file.read()
    with open(image, "wb") as file:
        file.write(data[:-300])
    before = train_workers_started()
    with pytest.raises(Exception) as failed:
        run_training(cfg)
    return SimpleNamespace(cfg=cfg, image=image, error=failed.value,
                           workers_started=train_workers_started() - before)


@pytest.fixture
def mlflow_uri(tmp_path):
    """A fresh sqlite MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def job_tmpdir():
    """A short folder for the Ray a job subprocess starts (unix socket paths below it are
    capped near 107 bytes, too short for pytest's tmp_path), removed afterwards."""
    folder = tempfile.mkdtemp(prefix="pj-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
