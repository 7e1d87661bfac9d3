"""Where a training job's start-up CPU goes, by process.

Runs ``python -m jobs.train`` for one optimizer step on the demo's scenes (a private
local Ray, an MLflow sqlite store in a fresh project folder under
``bench/results/startup_cpu/``, no registration) and counts the CPU seconds of the job
and every process it starts, by Ray's process title (``ray::RayTrainWorker``,
``ray::PlacementGroupCleaner``, ...) or script. One step, one evaluation and one
checkpoint are in the count too; on 2 cores everything else is what a job pays before
its first step. CPU seconds, unlike wall time, hardly depend on what else the machine
runs.

Variants (``--variants``): ``today`` (the job as it ships) and ``preemption-watcher``
(the same with ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1``, Ray Train's default, which a
private local cluster turns off).

    .venv/bin/python bench/bench_startup_cpu.py [--variants today,preemption-watcher]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import benchlib

SCENES = benchlib.RESULTS / "scenes" / "synthetic-200-50-96px-seed0"  # the demo's data
VARIANTS = {"today": {}, "preemption-watcher": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}}


def run_variant(name: str) -> dict:
    project = benchlib.RESULTS / "startup_cpu" / name
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    settings = [f"data.root={SCENES}", "train.epochs=1", "train.max_steps=1",
                "mlflow.register=false", *benchlib.MEASURED_MODEL_SETS]
    command = [sys.executable, "-m", "jobs.train", "--project-dir", str(project),
               *[arg for setting in settings for arg in ("--set", setting)]]
    env = {**os.environ, **VARIANTS[name]}
    started = time.perf_counter()
    with benchlib.ProcessCpu(every_s=0.25) as cpu:
        done = subprocess.run(command, cwd=benchlib.REPO, env=env, capture_output=True,
                              text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name}: the job failed ({done.returncode}):\n{done.stderr[-3000:]}")
    by_label = {label: seconds for label, seconds in cpu.by_label().items() if seconds >= 0.05}
    return {"variant": name, "command": " ".join(command[1:]), "env": VARIANTS[name],
            "wall_s": time.perf_counter() - started, "cpu_s": by_label,
            "cpu_total_s": sum(by_label.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    benchlib.setup_environment()
    benchlib.warn_if_busy()
    records = []
    for name in args.variants.split(","):
        with benchlib.phase(name):
            records.append(run_variant(name))
    labels = list(dict.fromkeys(label for record in records for label in record["cpu_s"]))
    rows = [(label, *(f"{record['cpu_s'].get(label, 0.0):.1f}" for record in records))
            for label in labels]
    rows.append(("**all processes**", *(f"**{r['cpu_total_s']:.1f}**" for r in records)))
    rows.append(("wall time of the job (s)", *(f"{r['wall_s']:.0f}" for r in records)))
    print(benchlib.markdown_table(("process", *(f"CPU s, {r['variant']}" for r in records)),
                                  rows))
    print(f"\nraw: {benchlib.write_json('startup_cpu', {'records': records})}")


if __name__ == "__main__":
    main()
