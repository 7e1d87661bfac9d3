"""Sweep margin, extension threshold (and alpha / PDML weight) with Ray Tune.

    python -m tuning.sweep --config configs/sweep-demo.yaml [--set sweep.search=random ...]
    ray job submit --working-dir . -- python -m tuning.sweep --project-dir "$PWD" --config ...

Every trial is an MLflow child run of one parent run per sweep; the parent holds the
results table and plots. Rerunning with the same ``sweep.name`` resumes the sweep
without rerunning finished trials.
"""

from __future__ import annotations

from jobs.cli import parse_config_command, ray_job, run_cli


def main() -> int:
    cfg = parse_config_command("python -m tuning.sweep", __doc__)

    with ray_job(cfg, include_sweep=True):
        # imported while Ray starts: torch, MLflow and Ray Tune take seconds to load
        from pdml_ray.service.tune.sweep import run_sweep
        from pdml_ray.service.tune.results import table_markdown

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
