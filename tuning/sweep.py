"""Sweep margin, extension threshold (and alpha / PDML weight) with Ray Tune.

    python -m tuning.sweep --config configs/sweep-demo.yaml [--set sweep.search=random ...]
    ray job submit --working-dir . -- python -m tuning.sweep --project-dir "$PWD" --config ...

Every trial is an MLflow child run of one parent run per sweep; the parent holds the
results table and plots. Rerunning with the same ``sweep.name`` resumes the sweep
without rerunning finished trials.
"""

from __future__ import annotations

import argparse

from jobs.cli import add_config_arguments, config_from_args, run_cli
from pdml_ray.config import Config, resolve_paths


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)

    from pdml_ray.console import settings_summary
    from pdml_ray.service.runtime import configure_logging, ray_session
    from pdml_ray.service.sweep import run_sweep, table_markdown
    from pdml_ray.service.tracking import check_tracking_store

    configure_logging()
    check_tracking_store(cfg.mlflow.tracking_uri)  # fail in seconds, before Ray starts
    print(settings_summary(cfg, resolve_paths(Config()), include_sweep=True), flush=True)
    with ray_session(cfg.ray.address):
        result = run_sweep(cfg)
    print(f"\nsweep {result.name}: {len(result.table)} trials "
          f"(MLflow parent run {result.parent_run_id} in {cfg.mlflow.tracking_uri})\n")
    print(table_markdown(result.table))
    if result.registered is not None:
        reg = result.registered
        verdict = "now @" + cfg.mlflow.champion_alias if reg.is_champion else "champion unchanged"
        print(f"best trial registered as models:/{reg.name}/{reg.version} ({verdict})")
    return 0


if __name__ == "__main__":
    run_cli(main)
