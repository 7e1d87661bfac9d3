"""Connecting to Ray: a running cluster when one is given, else a local one for this job."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import ray

from pdml_ray import console

log = logging.getLogger(__name__)

# Off in a private local cluster unless the user sets them: Ray's own metrics (core
# workers, Ray Train's controller and workers), and Train's preemption watcher, an actor
# polling for node drains that a cluster living and dying with its one job never has.
QUIET_LOCAL_RAY = ("RAY_enable_metrics_collection", "RAY_TRAIN_METRICS_ENABLED",
                   "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")

# A local Ray that ray_session(background=True) is starting; wait_for_ray() joins it.
_starting: Future | None = None


def start_local_ray(**init_kwargs: Any) -> str:
    """Start a private local Ray and return the folder holding its files.

    Each local cluster gets its own folder under $RAY_TMPDIR (else the system temp dir),
    set as RAY_TMPDIR for the raylet and every worker it starts, and records its address
    there the way ``ray start`` does. Ray Train's placement-group cleaner finds its
    cluster through that record; without it, with two local clusters on one machine
    (a test session and a job it launches, say) the cleaner cannot tell them apart and
    may query the other one, decide the trainer is gone and tear down healthy workers.
    """
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    # Short name: Ray's unix sockets live below it and paths are capped near 107 bytes.
    folder = tempfile.mkdtemp(prefix="r-", dir=base)
    os.environ["RAY_TMPDIR"] = folder
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Nothing reads Ray's Prometheus metrics on a private local cluster, and recording them
    # costs every Ray process CPU time the training workers need; each actor Train starts
    # costs about 1.7 CPU seconds of start-up (docs/benchmarks.md). Set a variable to 1 to
    # keep what it turns off.
    for variable in QUIET_LOCAL_RAY:
        os.environ.setdefault(variable, "0")
    # The dashboard serves the State API that Train's cleaner polls; bound to loopback
    # (reach a remote one through `ray dashboard` or an SSH tunnel).
    init_kwargs.setdefault("include_dashboard", True)
    init_kwargs.setdefault("dashboard_host", "127.0.0.1")
    ray.init(**init_kwargs)
    from ray._private.utils import write_ray_address  # pinned Ray; what `ray start` uses

    write_ray_address(ray.get_runtime_context().gcs_address)
    return folder


@contextmanager
def ray_session(address: str | None = None, *, background: bool = False) -> Iterator[None]:
    """Use the caller's Ray if already initialised; else connect to ``address`` /
    ``RAY_ADDRESS`` (set by ``ray job submit``), else start a private local Ray that is
    shut down on exit. Usage statistics stay off.

    ``background``: a local Ray starts in a thread and the block runs at once, so the
    caller's imports, store checks and data preparation overlap Ray's start (``ray.init``
    mostly waits for the processes it launches); :func:`wait_for_ray` joins it before
    the first use of Ray.

    Unless ``PDML_LOG_LEVEL`` asks for INFO or DEBUG (``--verbose``), the output of Ray's
    workers and actors stays in Ray's log files instead of reaching this console: the
    Train controller's and workers' internal lines, Ray core's warnings from C++ (the
    PreemptionWatcher's "constructor arguments in the object store"). Errors still reach
    the driver as the exceptions ``fit()`` raises, our workers' warnings through
    :mod:`pdml_ray.service.train.progress`."""
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    loud = console.verbose()
    options = {"log_to_driver": loud, "logging_level": logging.INFO if loud else logging.WARNING}
    global _starting
    # start_local_ray points RAY_TMPDIR at the cluster's own folder; the next local
    # session of this process starts from the caller's again, not nested inside it
    # (where Ray's socket paths outgrow the 107 bytes a unix socket allows).
    tmpdir_before = os.environ.get("RAY_TMPDIR")
    if address:
        ray.init(address=address, **options)
    elif background:
        log.info("no Ray cluster given: starting a local one")
        _exit_on_sigterm()  # what ray.init does, but only from the main thread
        _starting, released = Future(), threading.Event()
        threading.Thread(target=_start_and_hold, args=(_starting, released, options),
                         name="ray-start", daemon=True).start()
    else:
        log.info("no Ray cluster given: starting a local one")
        start_local_ray(**options)
    try:
        yield
    finally:
        starting, _starting = _starting, None
        if starting is not None:
            starting.exception()  # a start under way finishes before it is shut down
        ray.shutdown()
        if starting is not None:
            released.set()
        if tmpdir_before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = tmpdir_before


def wait_for_ray() -> None:
    """Return once Ray is up: at once unless :func:`ray_session` is starting it in the
    background; an error of that start is raised here."""
    if _starting is not None:
        _starting.result()


def _start_and_hold(future: Future, released: threading.Event, options: dict) -> None:
    """Start Ray, then stay alive until it is shut down: Ray's own processes are started
    with a parent-death signal, which Linux sends when the *thread* that started them
    exits, so an ended start thread would take the cluster with it."""
    ray_worker_log = logging.getLogger("ray._private.worker")
    ray_worker_log.addFilter(_sigterm_note)  # _exit_on_sigterm did it in the main thread
    try:
        start_local_ray(**options)
    except BaseException as exc:
        future.set_exception(exc)
        return
    future.set_result(None)
    released.wait()


def _sigterm_note(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("SIGTERM handler is not set")


def _exit_on_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


# The processes without which a local Ray is gone: its raylet (object store, scheduler)
# and its GCS server.
CORE_PROCESSES = ("raylet", "gcs_server")
WATCH_EVERY_S = 0.5
# How Ray's messages about a lost node begin (the raylet's, with its log's last lines, and
# the GCS's once the node misses its heartbeats).
LOST_NODE_NEWS = ("Raylet is terminated.", "The node with node id")


def lost_local_processes() -> list[str]:
    """The core processes of the local Ray this process started that have died
    (:data:`CORE_PROCESSES`); [] while they run, or when Ray was started elsewhere (a
    cluster this process only connected to is not its to watch)."""
    node = getattr(ray._private.worker.global_worker, "node", None)  # pinned Ray
    if node is None or not ray.is_initialized():
        return []
    return sorted({kind for kind, _ in node.dead_processes() if kind in CORE_PROCESSES})


@contextmanager
def exit_if_local_ray_lost(on_lost: Callable[[list[str]], None], *,
                           every_s: float = WATCH_EVERY_S,
                           lost: Callable[[], list[str]] = lost_local_processes,
                           end: Callable[[int], None] = os._exit) -> Iterator[None]:
    """While the block runs, watch the local Ray this process started. If its raylet or
    GCS server dies (`ray stop --force` from another shell, the OOM killer), call
    ``on_lost(what died)``, stop what is left of that cluster and end the process with
    status 2. Left alone, Ray's core worker ends a driver that lost its raylet with
    status 1 and no word from Python, after a state dump, once it next reaches for the
    lost object store (about 15 s on), and a driver that lost its GCS waits for it a
    minute first: nothing could mark the run or say how to resume it. Unless
    ``PDML_LOG_LEVEL`` asks for more, Ray's own news of the lost node (the raylet's last
    log lines, a state dump) is left out meanwhile: ``on_lost``'s line says it.
    ``lost`` and ``end`` are for tests."""
    stop = threading.Event()
    ray_worker = ray._private.worker  # pinned Ray: its driver prints the cluster's errors
    print_ray_error = ray_worker.print_to_stdstream

    def quiet_about_the_lost_node(data: dict, ignore_prefix: bool) -> None:
        """Ray's own news of the lost raylet (its log's last lines: a state dump), which the
        line ``on_lost`` prints replaces; the rest as Ray prints it."""
        lines = [line for line in data.get("lines", [])
                 if not line.startswith(LOST_NODE_NEWS)]
        if lines:
            print_ray_error({**data, "lines": lines}, ignore_prefix)

    def watch() -> None:
        while not stop.wait(every_s):
            died = lost()
            if died:
                break
        else:
            return
        try:
            on_lost(died)
        finally:
            _stop_local_ray()
            sys.stdout.flush()
            sys.stderr.flush()
            end(2)

    watcher = threading.Thread(target=watch, name="ray-watch", daemon=True)
    watcher.start()
    if not console.verbose():
        ray_worker.print_to_stdstream = quiet_about_the_lost_node
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = print_ray_error
        stop.set()
        watcher.join()


def _stop_local_ray() -> None:
    """Kill what is left of the local Ray this process started (no graceful shutdown:
    half of it is gone)."""
    node = getattr(ray._private.worker.global_worker, "node", None)
    if node is None:
        return
    try:
        node.kill_all_processes(check_alive=False, allow_graceful=False)
    except Exception as exc:  # the line already printed is what matters
        log.debug("could not stop the rest of the local Ray: %s", exc)


def configure_logging(level: int | None = None) -> None:
    """The console of a job: as ``PDML_LOG_LEVEL`` says (:func:`console.configure_logging`),
    or every logger at an explicit ``level`` with time and source."""
    if level is None:
        console.configure_logging()
        return
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("alembic", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
