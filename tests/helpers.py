"""What several test modules share: the tiny training config, and running a job as a user
runs it (``python -m jobs.<name>`` in its own session, every process it started gone
afterwards). Fixtures live in the conftest files; this module holds plain functions."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mlflow.tracking import MlflowClient

from pdml_ray.config import from_dict, resolve_paths
from pdml_ray.service.tracking import RUN_NAME_TAG

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, data_root, mlflow_uri, **sections):
    """Seconds-per-epoch training: 16 synthetic 48 px scenes, resnet18, 2 Ray workers."""
    raw = {
        "data": {"dataset": "synthetic", "root": str(data_root), "crop_size": 48,
                 "scale_min": 0.8, "scale_max": 1.2, "synthetic_train": 16,
                 "synthetic_val": 6, "synthetic_size": 48, "synthetic_seed": 3},
        "model": {"backbone": "resnet18", "pretrained": None, "output_stride": 8,
                  "head": "aspp"},
        "loss": {"margin": 5.0, "pdml_weight": 0.1, "subgroup_size": 2, "mining": "global"},
        "extension": {"start_epoch": 1},
        "train": {"supervision": "point+pdml+ext", "epochs": 3, "batch_size": 4,
                  "optimizer": "adamw", "lr": 2e-3, "head_lr_mult": 1.0, "weight_decay": 1e-4,
                  "log_every_steps": 1, "seed": 0},
        "ray": {"num_workers": 2, "storage_path": str(tmp_path / "ray_results"),
                "max_failures": 0},
        "mlflow": {"tracking_uri": mlflow_uri, "artifact_location": str(tmp_path / "artifacts"),
                   "experiment": "e2e", "registered_model": "pdml-scene-parser"},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return resolve_paths(from_dict(raw), tmp_path)


def wait_for(condition, *, timeout_s: float, what: str, stop: threading.Event | None = None):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            raise AssertionError(f"stopped while waiting for {what}")
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def run_beside(fault, work, *, join_timeout_s: float):
    """Run ``work()`` while ``fault(done)`` acts on it from a thread of its own (kills a
    worker, stops a server, ...): the harness of every chaos test. ``done`` is set once
    ``work`` returns or raises, so a fault still waiting (:func:`wait_for` with
    ``stop=done``) gives up. Returns ``(work's result, the fault's failure)``: the text of
    an AssertionError the fault raised (a wait that timed out), or None."""
    done, failures = threading.Event(), []

    def guarded() -> None:
        try:
            fault(done)
        except AssertionError as exc:
            failures.append(str(exc))

    thread = threading.Thread(target=guarded, daemon=True)
    thread.start()
    try:
        result = work()
    finally:
        done.set()
        thread.join(timeout=join_timeout_s)
    return result, (failures[0] if failures else None)


def session_pids(session_id: int) -> list[int]:
    """Live (non-zombie) processes of one session: a job started with start_new_session
    and every Ray process it spawned (Ray's workers get their own process groups but
    stay in the session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session_id:
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.append(int(entry.name))
    return pids


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL a job and every process it started, and wait until all are gone. Only this
    session is touched: `ray stop` would also stop other people's clusters."""
    def kill_remaining():
        for pid in session_pids(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process.poll() is None:
            return False
        return not session_pids(process.pid)

    wait_for(kill_remaining, timeout_s=60, what=f"the processes of session {process.pid} to end")


def job_env(ray_tmpdir: str | None = None) -> dict[str, str]:
    """The environment of a job run as a subprocess: no user cluster, no stray tracking
    URI, Ray's files in ``ray_tmpdir`` when given (keep it short: Ray's unix socket paths
    below it are capped near 107 bytes)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PYTEST_CURRENT_TEST")}
    env.update(PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true")
    if ray_tmpdir is not None:
        env["RAY_TMPDIR"] = ray_tmpdir
    return env


def start_job(args: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen:
    with open(log_file, "w") as log:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


# Whether the running test carries the ``ray`` marker (set by tests/conftest.py).
CURRENT_TEST = {"ray": True}


def run_job(*args: str, env: dict[str, str] | None = None, timeout_s: float = 900
            ) -> subprocess.CompletedProcess:
    """``python -m <args>`` run to its end as a user would (``env``: :func:`job_env` by
    default); every process it started is gone afterwards. ``left_running`` on the result
    lists the command lines of the processes the job left behind (e.g. a local Ray it
    did not shut down), still alive 10 s after it ended, before they were killed.

    In a test without the ``ray`` marker, the job's RAY_TMPDIR is an empty folder of its
    own, and a job that started a local Ray there fails the test: ``-m "not ray"`` must
    start no Ray."""
    env = job_env() if env is None else env
    watched = None
    if not CURRENT_TEST["ray"]:
        watched = tempfile.mkdtemp(prefix="pj-", dir="/tmp")  # short: Ray's socket paths
        env = {**env, "RAY_TMPDIR": watched}
    try:
        result = _run_to_the_end(args, env, timeout_s)
    finally:
        started = os.listdir(watched) if watched else []
        if watched:
            shutil.rmtree(watched, ignore_errors=True)
    assert not started, (f"python -m {' '.join(args)} started a local Ray ({started} in its "
                         "RAY_TMPDIR): mark the test @pytest.mark.ray")
    return result


def _run_to_the_end(args, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    process = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    left_running: list[str] = []
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
        deadline = time.monotonic() + 10
        while session_pids(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left_running = [_command_line(pid) for pid in session_pids(process.pid)]
    finally:
        kill_session(process)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    result.left_running = left_running
    return result


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return f"pid {pid} (gone)"


def only_run(uri: str, experiment: str):
    """The experiment's single MLflow run (a resumed job continues its run, no duplicate)."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.data.tags.get(RUN_NAME_TAG) for r in runs]
    return runs[0]


class _Refuse(BaseHTTPRequestHandler):
    def _refuse(self):
        self.server.requests.append(f"{self.command} {self.path}")
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PATCH = do_DELETE = _refuse

    def log_message(self, *args):  # keep the test output clean
        pass


class UnavailableStore:
    """A real HTTP server on 127.0.0.1 that answers every request with 503 (the status
    MLflow's client retries with backoff for minutes) and records each request as
    ``"METHOD /path?query"`` in ``requests``. Use it as a context manager."""

    def __enter__(self) -> "UnavailableStore":
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
        self.server.requests = self.requests = []
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
