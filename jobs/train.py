"""Train a scene parser from point labels on Ray and register it in MLflow.

    python -m jobs.train [--config FILE] [--set train.epochs=5 ...]
    ray job submit --working-dir . -- python -m jobs.train --project-dir "$PWD" ...
"""

from __future__ import annotations

import shlex
import sys
import time
from functools import partial

STARTED_AT = time.time()  # before the heavy imports: start-up counts from the command

from jobs.cli import parse_config_command, ray_job, run_cli  # noqa: E402
from pdml_ray.service.train.phases import summary_line  # noqa: E402


def resume_command(argv: list[str], run_name: str) -> str:
    """The command line that resumes run ``run_name``: the same arguments, with the run's
    name set last (a name given before is left out: it is the same one)."""
    args, kept = list(argv), []
    while args:
        arg = args.pop(0)
        if arg == "--set" and args and args[0].startswith("ray.run_name="):
            args.pop(0)
        elif not arg.startswith("--set=ray.run_name="):
            kept.append(arg)
    return shlex.join(["python", "-m", "jobs.train", *kept, "--set", f"ray.run_name={run_name}"])


def main() -> int:
    cfg = parse_config_command("python -m jobs.train", __doc__)
    try:
        with ray_job(cfg):
            # imported while Ray starts: torch, MLflow and Ray Train take seconds to load
            from pdml_ray.service.train.driver import run_training

            result = run_training(cfg, console=True, started_at=STARTED_AT,
                                  resume_command=partial(resume_command, sys.argv[1:]))
    except KeyboardInterrupt as stop:
        run_name = getattr(stop, "run_name", None)  # a TrainingInterrupted: it can resume
        if run_name is None:
            raise
        print(f"interrupted: resume with  {resume_command(sys.argv[1:], run_name)}",
              file=sys.stderr)
        return 130
    print(f"\nRay run        {result.run_name}")
    print(f"MLflow run     {result.mlflow_run_id} in {cfg.mlflow.tracking_uri}")
    print(f"best val mIoU  {result.best_val_miou:.4f}   pixel acc {result.best_val_pixel_acc:.4f}")
    print(f"checkpoint     {result.checkpoint_path}")
    print(f"time           {summary_line(result.phase_seconds)}")
    if result.registered is not None:
        reg = result.registered
        alias = cfg.mlflow.champion_alias
        verdict = (f"now @{alias}" if reg.is_champion else f"@{alias} unchanged (not better)")
        print(f"registered     models:/{reg.name}/{reg.version}  ({verdict})")
    print(f"\nSee it in the MLflow UI:\n  .venv/bin/mlflow ui --backend-store-uri "
          f"{cfg.mlflow.tracking_uri} --port 5000   # then open http://127.0.0.1:5000")
    return 0


if __name__ == "__main__":
    run_cli(main)
