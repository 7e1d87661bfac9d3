"""Shared fixtures. Ray and MLflow files stay in temporary folders; every Ray cluster
a test starts is shut down."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests choose their own store
os.environ.pop("RAY_ADDRESS", None)  # tests never attach to a user's cluster


@pytest.fixture(scope="session")
def ray_tmpdir():
    # Short path: Ray's unix sockets live under it and have a ~100 character limit.
    folder = tempfile.mkdtemp(prefix="pdmlray-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(ray_tmpdir):
    """One real local Ray (2 CPUs) for all end-to-end tests of a session."""
    import ray

    os.environ["RAY_TMPDIR"] = ray_tmpdir
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmpdir,
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0",
                                       "MLFLOW_DISABLE_TELEMETRY": "true"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path):
    """A fresh sqlite MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
