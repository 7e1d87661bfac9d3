"""What every job's command line shares: --config, --set, --project-dir, and clean errors."""

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


def config_from_args(args: argparse.Namespace) -> Config:
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
