"""What the benchmark scripts share: where results go, the benchmark's synthetic scenes,
configs from ``--config``/``--set``, MLflow look-ups, statistics and markdown tables.

The scripts run as files (``python bench/x.py``); Ray puts the script's folder on its
workers' ``sys.path``, so code the workers run may import this module too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from pdml_ray.reports import markdown_table  # noqa: F401  (the benchmarks' tables)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the scripts share the jobs' command-line pieces (jobs/cli.py)
    sys.path.insert(1, str(REPO))
RESULTS = REPO / "bench" / "results"

# The fixed synthetic benchmark (also the demo's data): 200 train / 50 val scenes of
# 96 x 96 px, 8 classes, 8.5 points per train image (one per instance), seed 0.
SCENES = {"synthetic_train": 200, "synthetic_val": 50, "synthetic_size": 96, "synthetic_seed": 0}
QUICK_SCENES = {"synthetic_train": 16, "synthetic_val": 6, "synthetic_size": 48,
                "synthetic_seed": 3}


def setup_environment() -> None:
    """Ray and MLflow write inside the repository and report nothing home (as ``make``)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_TMPDIR", str(REPO / ".ray_tmp"))
    os.makedirs(os.environ["RAY_TMPDIR"], exist_ok=True)


def machine() -> dict[str, Any]:
    """The machine and versions a figure comes from, and how busy the machine was."""
    import torch

    info = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "cpu_model": _cpu_model(), "cpus": os.cpu_count(),
            # The vector kernels torch picks (AVX2, AVX512, ...) round differently, so the
            # same seed trains to a different model on another CPU: say which ran.
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(),
            "torch": torch.__version__, "load_average_1min": os.getloadavg()[0],
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    for name in ("ray", "mlflow"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def warn_if_busy() -> None:
    """Say so when other processes compete for the CPUs: timings are then inflated."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cpus:
        print(f"WARNING: load average {load:.1f} on {cpus} CPUs before the benchmark: "
              "timings are contaminated by other processes\n")


def write_json(name: str, payload: Mapping[str, Any], *, quick: bool = False) -> Path:
    """``bench/results/<name>[-quick].json`` with the machine description added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'-quick' if quick else ''}.json"
    payload = _strict({"machine": machine(), **payload})
    path.write_text(json.dumps(payload, indent=2, allow_nan=False))
    return path


def _strict(value: Any) -> Any:
    """JSON-ready: NaN and infinities become null, tuples lists, paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


# -- configs -----------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and repeatable ``--set KEY=VALUE`` as the jobs take them, and ``--quick``."""
    from jobs.cli import add_config_file_arguments

    add_config_file_arguments(parser, defaults="the benchmark's synthetic scenes")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a validation run of the script, not a figure")


# The model the benchmarks' figures were measured on: ResNet-18 from random init, the
# demo's model until Lite0 from ImageNet replaced it (docs/benchmarks.md, "The demo's
# start"). Without ``--config`` a benchmark starts from it, so that its documented command
# still reproduces its figure; a benchmark of the demo as it is now (bench/labelling.py)
# or ``--set model.backbone=...`` says otherwise.
MEASURED_MODEL = {"model.backbone": "resnet18", "model.pretrained": None}
# The same as ``--set`` arguments, for benchmarks that run ``python -m jobs.train`` itself.
MEASURED_MODEL_SETS = [f"{key}={'null' if value is None else value}"
                       for key, value in MEASURED_MODEL.items()]


def bench_config(args: argparse.Namespace, settings: Mapping[str, Any], *, experiment: str):
    """The config of a benchmark run: ``--config`` (or the defaults with
    :data:`MEASURED_MODEL`), then the benchmark's ``settings``, then ``--set``. Results,
    Ray storage and the MLflow store live under ``bench/results``; synthetic scenes get a
    folder named after their generation settings, so that scenes of another size are
    never silently reused."""
    from pdml_ray.config import apply_overrides, load_config, resolve_paths

    cfg = load_config(args.config)
    scenes = {}
    if not args.config:
        cfg = cfg.replace(**MEASURED_MODEL)
        chosen = QUICK_SCENES if args.quick else SCENES
        scenes = {f"data.{k}": v for k, v in chosen.items()}
        scenes["data.crop_size"] = chosen["synthetic_size"]
    cfg = cfg.replace(**{
        **scenes,
        "ray.storage_path": str(RESULTS / "ray_results"),
        "mlflow.tracking_uri": f"sqlite:///{RESULTS / 'mlflow.db'}",
        "mlflow.artifact_location": str(RESULTS / "mlartifacts"),
        "mlflow.experiment": experiment,
        "mlflow.register": False,
        **settings})
    cfg = apply_overrides(cfg, args.overrides)
    root_given = any(item.partition("=")[0].strip() == "data.root" for item in args.overrides)
    if cfg.data.dataset.startswith("synthetic") and not root_given and not args.config:
        d = cfg.data
        version = "" if d.dataset == "synthetic" else "v2-"
        cfg = cfg.replace(**{"data.root": str(
            RESULTS / "scenes" / f"synthetic-{version}{d.synthetic_train}-{d.synthetic_val}-"
                                 f"{d.synthetic_test}-{d.synthetic_size}px-seed{d.synthetic_seed}-"
                                 f"test{d.synthetic_test_seed}")})
    return resolve_paths(cfg, REPO)


def describe_config(cfg, *, supervision: bool = True, mining: bool = True) -> str:
    """One line: model, data, batch (and supervision, mining scope) of a run."""
    d, t = cfg.data, cfg.train
    data = (f"{d.dataset} {d.synthetic_train}/{d.synthetic_val} scenes at {d.synthetic_size} px"
            f", judged on {d.eval_split}" if d.dataset.startswith("synthetic") else d.dataset)
    device = "GPU" if cfg.ray.use_gpu else "CPU"
    return (f"{cfg.model.backbone} OS{cfg.model.output_stride} {cfg.model.head}, {data}, crop "
            f"{d.crop_size}, global batch {t.batch_size} on {cfg.ray.num_workers} {device} "
            f"workers" + (f", supervision {t.supervision}" if supervision else "")
            + (f", mining {cfg.loss.mining}" if mining else ""))


# -- MLflow ------------------------------------------------------------------------------
def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float, int]]:
    """``(step, value, timestamp_ms)`` of one metric, in step order."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value, m.timestamp) for m in history)


def pooled_extension_accuracy(uri: str, run_id: str) -> tuple[float, float]:
    """(accuracy over all extended pixels of the run, mean extended pixels per step)."""
    accuracy = {step: value for step, value, _ in metric_history(uri, run_id, "ext_accuracy")}
    pixels = {step: value
              for step, value, _ in metric_history(uri, run_id, "ext_pixels_per_step")}
    total = sum(pixels[s] for s in accuracy if s in pixels)
    if not total:
        return math.nan, 0.0
    return (sum(accuracy[s] * pixels[s] for s in accuracy if s in pixels) / total,
            statistics.mean(pixels.values()))


def step_times(uri: str, run_id: str, *, global_batch: int, warmup: int) -> dict[str, list[float]]:
    """Per-step seconds of a run logged with ``train.log_every_steps=1``, warm-up dropped.

    ``loop``: global batch / ``images_per_s``, the engine's own timer on rank 0 (from the
    end of one logging call to the end of the next step). ``wall``: the gap between the
    timestamps of consecutive metric writes, which also holds rank 0's MLflow write.
    """
    rows = [row for row in metric_history(uri, run_id, "images_per_s") if row[0] > warmup]
    loop = [global_batch / value for _, value, _ in rows]
    wall = [(b[2] - a[2]) / 1e3 for a, b in zip(rows, rows[1:]) if b[0] == a[0] + 1]
    return {"loop": loop, "wall": wall}


# -- statistics and tables -----------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(int(round(q / 100 * (len(ordered) - 1))), len(ordered) - 1)]


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``"41.2 ± 1.3"`` (sample std over seeds); one value: no ±; none: ``n/a``."""
    values = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def paired_interval(differences: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): paired differences' mean and its 95% t-interval (one value:
    unbounded)."""
    from scipy import stats

    mean = statistics.mean(differences)
    if len(differences) < 2:
        return mean, -math.inf, math.inf
    half = (stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences)
            / math.sqrt(len(differences)))
    return mean, mean - half, mean + half


def paired_text(differences: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``"+4.1 [+1.0, +7.2]"``: the mean and 95% interval; one value: ``"+4.1 (1 seed)"``."""
    if not differences:
        return "n/a"
    mean, low, high = (scale * v for v in paired_interval(differences))
    if len(differences) < 2:
        return f"{mean:+.{digits}f} (1 seed)"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


@contextmanager
def phase(label: str) -> Iterator[None]:
    """Print a progress line before and after a long phase, with its duration."""
    start = time.perf_counter()
    print(f"-- {label} ...", flush=True)
    yield
    print(f"-- {label}: {time.perf_counter() - start:.0f} s", flush=True)


# -- CPU by process ----------------------------------------------------------------------
def process_label(proc) -> str:
    """A stable name for a process of this job: Ray's process title (``ray::...``), the
    script a Python process runs (``dashboard.py``, ``log_monitor.py``), else its name."""
    try:
        cmdline = proc.cmdline()
        name = proc.name()
    except Exception:  # gone between listing and reading: psutil.NoSuchProcess and kin
        return "gone"
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0]
    scripts = [Path(arg).name for arg in cmdline[1:] if arg.endswith(".py")]
    return scripts[0] if scripts else name


class ProcessCpu:
    """CPU seconds of this process and all its descendants, by :func:`process_label`,
    sampled every ``every_s`` in a thread from entering the block to leaving it: a
    process's last reading before it exits is what it counts, under the last label it
    had (a short-lived one seen in no sample is missed), less what it had used before
    the block."""

    def __init__(self, every_s: float = 0.5) -> None:
        import threading

        self.every_s = every_s
        self._last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-cpu", daemon=True)
        self.wall_seconds = 0.0

    def __enter__(self) -> "ProcessCpu":
        self._started = time.perf_counter()
        self._sample()
        self._before = {pid: seconds for pid, (_, seconds) in self._last.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        self.wall_seconds = time.perf_counter() - self._started

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                seconds = times.user + times.system
            except Exception:  # exited since the listing
                continue
            # Read again each time: a Ray worker starts as setup_worker.py, idles as
            # ray::IDLE and takes its ray::<Actor> title once it runs one; its CPU counts
            # under the last title seen.
            label = process_label(proc)
            if label == "gone":
                label = self._last.get(proc.pid, (label, 0.0))[0]
            self._last[proc.pid] = (label, seconds)

    def by_label(self) -> dict[str, float]:
        """CPU seconds per label, most first."""
        totals: dict[str, float] = {}
        for pid, (label, seconds) in self._last.items():
            totals[label] = totals.get(label, 0.0) + seconds - self._before.get(pid, 0.0)
        return dict(sorted(totals.items(), key=lambda item: -item[1]))
