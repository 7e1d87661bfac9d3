"""bench/benchlib.ProcessCpu: the CPU seconds of the processes a benchmark starts, under
the last name each had (a Ray worker starts as setup_worker.py and ends as its actor)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import benchlib  # noqa: E402  (a script folder, not a package)

# Spins on the CPU as burn_a.py for 0.6 s, then re-executes itself as burn_b.py and spins
# 0.6 s more: one process (exec keeps the pid) whose name changes half-way.
BURN = """
import os, sys, time
end = time.process_time() + 0.6
while time.process_time() < end:
    pass
if sys.argv[0].endswith("burn_a.py"):
    os.execv(sys.executable, [sys.executable, sys.argv[0].replace("burn_a", "burn_b")])
"""


def test_a_child_is_counted_under_its_last_name(tmp_path):
    for name in ("burn_a.py", "burn_b.py"):
        (tmp_path / name).write_text(BURN)
    with benchlib.ProcessCpu(every_s=0.05) as cpu:
        subprocess.run([sys.executable, str(tmp_path / "burn_a.py")], check=True)
    seconds = cpu.by_label()
    assert "burn_a.py" not in seconds
    # exec keeps the CPU time used so far: both halves count, under the last name.
    assert 1.0 <= seconds["burn_b.py"] <= 2.5, seconds
