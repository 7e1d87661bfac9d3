"""What every job's command line shares: --config, --set, --project-dir, the start of a
job that runs on Ray (train, sweep), the inference flags of predict and evaluate, and
clean errors."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from typing import Callable, Iterator, Sequence

from pdml_ray.config import Config, ConfigError, load_config, project_dir, resolve_paths


def add_config_file_arguments(parser: argparse.ArgumentParser, *,
                              defaults: str = "synthetic scenes, local Ray, sqlite MLflow"
                              ) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE``: what every job and benchmark
    script takes to make its config (``defaults`` says what is used without a file)."""
    parser.add_argument("--config", help=f"YAML config (default: the embedded defaults: "
                        f"{defaults})")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. train.lr=0.01 "
                        "(repeatable; applied last)")


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--model URI``: the registered model a job reads (predict, evaluate, suggest)."""
    parser.add_argument("--model", default="models:/pdml-scene-parser@champion",
                        help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model "
                        "(default: %(default)s)")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_file_arguments(parser)
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


def parse_config_command(prog: str, description: str,
                         argv: Sequence[str] | None = None) -> Config:
    """The config of a job whose only arguments are the config ones (jobs.train,
    tuning.sweep): ``argv`` (None: ``sys.argv[1:]``) parsed, the file read, the
    overrides applied and checked, and paths resolved. Raises ConfigError naming the
    file or key; argparse exits 2 on an unknown flag."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(argv))


@contextlib.contextmanager
def ray_job(cfg: Config, *, include_sweep: bool = False) -> Iterator[None]:
    """The start of a job that runs on Ray, then the Ray session at ``ray.address``.

    The MLflow store is checked first, so a wrong tracking URI fails in seconds rather
    than after Ray has started; the settings that differ from the defaults (with the
    sweep section when ``include_sweep``) are printed before anything runs.
    """
    from pdml_ray.console import settings_summary
    from pdml_ray.service.runtime import configure_logging, ray_session
    from pdml_ray.service.tracking import check_tracking_store

    configure_logging()
    check_tracking_store(cfg.mlflow.tracking_uri)
    print(settings_summary(cfg, resolve_paths(Config()), include_sweep=include_sweep), flush=True)
    # A local Ray starts in the background: the job's imports and data checks overlap it.
    with ray_session(cfg.ray.address, background=True):
        yield


def _user_error(exc: BaseException) -> BaseException | None:
    """The error to show the user as one line, or None for a bug (shown with a traceback).

    Errors raised inside Ray Train workers (bad data found while loading, a non-finite
    loss) reach the driver wrapped in a WorkerGroupError holding each failed rank's
    original exception; the original is what the user can act on.
    """
    from pdml_ray.data import DataError
    from pdml_ray.service.train.checkpoint import CheckpointError
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


# argparse types: a ValueError would be reported as "invalid positive_int value", so each
# raises ArgumentTypeError, which argparse prints after the flag's name.
def scales_arg(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not scales or not all(0 < scale < math.inf for scale in scales):
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return scales


def overlap_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"overlap is a fraction in [0, 1), got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
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
