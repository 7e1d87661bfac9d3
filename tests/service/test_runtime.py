"""Local Ray sessions one after another in one process, as a notebook or a benchmark
that trains twice opens them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, job_env

pytestmark = pytest.mark.ray

# Each session must start from the caller's RAY_TMPDIR: the second used to nest its
# folder inside the first one's, past the 107 bytes a unix socket path may hold.
TWO_SESSIONS = """
import os, ray
from pdml_ray.service.runtime import ray_session, wait_for_ray
before = os.environ["RAY_TMPDIR"]
for background in (True, False):
    with ray_session(background=background):
        wait_for_ray()
        assert ray.get(ray.put(41)) + 1 == 42
        inside = os.environ["RAY_TMPDIR"]
    print(os.path.dirname(inside) == before, os.environ["RAY_TMPDIR"] == before)
"""


def test_local_sessions_in_turn_each_start_from_the_callers_tmpdir(job_tmpdir):
    done = subprocess.run([sys.executable, "-c", TWO_SESSIONS], cwd=REPO, text=True,
                          capture_output=True, env=job_env(job_tmpdir), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["True True", "True True"]
