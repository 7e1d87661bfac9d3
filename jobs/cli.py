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


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; known user errors print one clear line and exit 2, no traceback."""
    from pdml_ray.data import DataError
    from pdml_ray.service.tracking import TrackingUnavailable

    try:
        code = main()
    except (ConfigError, DataError, TrackingUnavailable, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
