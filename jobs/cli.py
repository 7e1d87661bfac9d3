"""What every job's command line shares: --config, --set, --project-dir, the inference
flags of predict and evaluate, and clean errors."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from pdml_ray.config import Config, ConfigError, load_config, project_dir, resolve_paths


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (default: the embedded defaults: "
                        "synthetic scenes, local Ray, sqlite MLflow)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. train.lr=0.01 "
                        "(repeatable)")
    parser.add_argument("--project-dir", default=None,
                        help="folder that relative paths and the default MLflow store live in "
                        "(default: $PDML_PROJECT_DIR or the current folder; under ray job "
                        "submit pass --project-dir \"$PWD\")")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's and MLflow's own log lines, with times "
                        "(same as PDML_LOG_LEVEL=DEBUG)")


def config_from_args(args: argparse.Namespace) -> Config:
    if getattr(args, "verbose", False):
        os.environ["PDML_LOG_LEVEL"] = "DEBUG"  # inherited by a local Ray's workers
    base = project_dir(args.project_dir)
    os.environ["PDML_PROJECT_DIR"] = str(base)  # so trials and workers anchor paths the same way
    return resolve_paths(load_config(args.config, args.overrides), base)


def _user_error(exc: BaseException) -> BaseException | None:
    """The error to show the user as one line, or None for a bug (shown with a traceback).

    Errors raised inside Ray Train workers (bad data found while loading, a non-finite
    loss) reach the driver wrapped in a WorkerGroupError holding each failed rank's
    original exception; the original is what the user can act on.
    """
    from pdml_ray.data import DataError
    from pdml_ray.service.checkpoint import CheckpointError
    from pdml_ray.service.tracking import TrackingUnavailable

    known = (ConfigError, DataError, TrackingUnavailable, CheckpointError, FileNotFoundError,
             FloatingPointError)
    if isinstance(exc, known):
        return exc
    ray_train = sys.modules.get("ray.train")  # only a job that ran Ray can get its errors
    if ray_train is not None and isinstance(exc, ray_train.WorkerGroupError):
        failures = [failure for _, failure in sorted(exc.worker_failures.items())]
        return next((failure for failure in failures if isinstance(failure, known)), None)
    return None


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; known user errors print one clear line and exit 2, no traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        shown = _user_error(exc)
        if shown is None:
            raise
        # One line even when the message quotes a multi-line one (a library's error).
        message = " ".join(line.strip() for line in str(shown).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def scales_arg(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not scales or min(scales) <= 0:
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return scales


def overlap_arg(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"overlap is a fraction in [0, 1), got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Sliding-window and test-time-augmentation flags of jobs.predict and jobs.evaluate."""
    group = parser.add_argument_group("sliding window and test-time augmentation")
    group.add_argument("--tile", type=positive_int, default=None, metavar="PIXELS",
                       help="predict images larger than this in overlapping square windows "
                       "of this side (default: whole images)")
    group.add_argument("--overlap", type=overlap_arg, default=1 / 3, metavar="FRACTION",
                       help="overlap of neighbouring windows, a fraction of --tile "
                       "(default: 0.33)")
    group.add_argument("--scales", type=scales_arg, default=(1.0,), metavar="S1,S2,...",
                       help="predict at these scales (1: as given) and average the "
                       "probabilities (e.g. 0.75,1,1.25; default: 1)")
    group.add_argument("--flip", action="store_true",
                       help="also predict on the mirrored image and average")


def inference_options(args: argparse.Namespace) -> dict:
    return {"tile": args.tile, "overlap": args.overlap, "scales": args.scales, "flip": args.flip}
