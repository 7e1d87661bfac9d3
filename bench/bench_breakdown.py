"""Where a training job's wall time goes, from the command to its exit.

Runs ``python -m jobs.train`` as a user does (a private local Ray, an MLflow sqlite store
and registry in a fresh project folder under ``bench/results/breakdown/``) and splits
its wall time into the phases the job logs as ``time/<phase>_s`` metrics
(``pdml_ray.service.train.phases``): start-up (command to the first optimizer step, here
measured from this script's launch of the command), optimizer steps, evaluation,
checkpointing, logging (metrics, tables, sample images) and registration (after
``fit()``); "other" is the rest of the wall time (Ray's shutdown, the interpreter's exit).

Shapes (``--shapes``):
- ``demo``: the embedded defaults, exactly what ``make demo`` trains, on the benchmark's
  synthetic scenes; ``demo-point`` the same with ``train.supervision=point``, the
  baseline the demo's val mIoU is compared with;
- ``paper``: the paper's model and crop (ResNet-101 OS8 + ASPP, 321 x 321) on 16 scenes
  for 2 epochs (4 steps, an evaluation after each epoch): a sample of each phase's cost
  on CPU. Its V100 projection scales the steps and the evaluation by the FLOP-counted
  V100 AMP step of ``bench_flops.py`` (35% of peak) and keeps the rest as measured.

Resumable: every finished shape is written to ``bench/results/breakdown.json`` at once and
a rerun skips it (``--force`` runs it again). The stacked bars go to
``bench/results/breakdown.png``; the "before" bar of the demo is the figure measured before
the phases were logged (713 s, of which 604 s of steps from the logged ``images_per_s``,
48 s before the first step and 20 s of registration).

    .venv/bin/python bench/bench_breakdown.py [--shapes demo,paper] [--force]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from pdml_ray.service.train.phases import PHASES, phase_metric

# The demo before this benchmark existed: phases not logged, so only these are known.
BEFORE_DEMO = {"startup": 48.0, "steps": 604.0, "registration": 20.0,
               "evaluation + checkpointing + logging": 41.0}
V100_AMP_STEP_S = 0.088  # bench_flops.py: the paper's step at 35% of V100 FP16 peak
SHAPES = {
    "demo": [*benchlib.MEASURED_MODEL_SETS],
    "demo-point": [*benchlib.MEASURED_MODEL_SETS, "train.supervision=point"],
    "paper": ["model.backbone=resnet101", "data.synthetic_size=321", "data.crop_size=321",
              "data.synthetic_train=16", "data.synthetic_val=4", "train.epochs=2"],
}
# Scenes generated once for every run of a shape (absolute: the job's relative paths
# are read from its project folder).
SCENES = {"demo": benchlib.RESULTS / "scenes" / "synthetic-200-50-96px-seed0",
          "demo-point": benchlib.RESULTS / "scenes" / "synthetic-200-50-96px-seed0",
          "paper": benchlib.RESULTS / "scenes" / "synthetic-16-4-321px-seed0"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="demo,demo-point,paper",
                        help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--force", action="store_true", help="run finished shapes again")
    parser.add_argument("--quick", action="store_true",
                        help="2 optimizer steps per shape: a check of the script, not a figure")
    args = parser.parse_args()
    args.shapes = [shape.strip() for shape in args.shapes.split(",") if shape.strip()]
    unknown = [shape for shape in args.shapes if shape not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {', '.join(unknown)} (known: {', '.join(SHAPES)})")
    return args


def run_job(shape: str, *, quick: bool = False) -> dict:
    """One ``python -m jobs.train`` of ``shape`` in a fresh project folder; its phases."""
    project = benchlib.RESULTS / "breakdown" / f"{shape}{'-quick' * quick}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    settings = [*SHAPES[shape], f"data.root={SCENES[shape]}", *(["train.max_steps=2"] * quick)]
    sets = [arg for setting in settings for arg in ("--set", setting)]
    command = [sys.executable, "-m", "jobs.train", "--project-dir", str(project), *sets]
    started = time.time()
    done = subprocess.run(command, cwd=benchlib.REPO, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"{shape}: the job failed ({done.returncode}):\n{done.stderr[-3000:]}")
    metrics = job_metrics(project)
    phases = {phase: metrics[phase_metric(phase)] for phase in PHASES
              if phase_metric(phase) in metrics}
    # From this script's launch, not the job's own clock: the interpreter's start counts.
    phases["startup"] = metrics["first_step_unix"] - started
    phases["other"] = wall - sum(phases.values())
    return {"shape": shape, "command": " ".join(command[1:]), "wall_s": wall,
            "phases_s": phases, "steps": int(metrics["steps"]),
            "best_val_miou": metrics.get("best_val_miou"), "machine": benchlib.machine()}


def job_metrics(project: Path) -> dict[str, float]:
    """The job's ``time/*`` metrics (the last value of each), its step count and when its
    first step began, from the MLflow store in ``project``."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = [run for experiment in client.search_experiments()
            for run in client.search_runs([experiment.experiment_id])]
    if len(runs) != 1:
        raise SystemExit(f"{project}: expected one MLflow run, found {len(runs)}")
    run = runs[0]
    metrics = dict(run.data.metrics)
    metrics["steps"] = max(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    # the first step's wall-clock start, as the workers report it to Ray
    first = metrics.get("first_step_unix")
    if first is None:
        raise SystemExit(f"{project}: the run logged no first_step_unix")
    return metrics


def v100_projection(record: dict) -> dict[str, float]:
    """The paper-shaped run on a V100 with AMP: steps and evaluation scaled by the ratio of
    the projected V100 step to the measured CPU step; the rest as measured."""
    phases = dict(record["phases_s"])
    cpu_step = phases["steps"] / record["steps"]
    scale = V100_AMP_STEP_S / cpu_step
    phases["steps"] *= scale
    phases["evaluation"] = phases.get("evaluation", 0.0) * scale
    return phases


def draw(records: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [("demo, before", BEFORE_DEMO)]
    for shape, label in (("demo", "demo"), ("demo-point", "demo, point")):
        if shape in records:
            bars.append((label, records[shape]["phases_s"]))
    if "paper" in records:
        bars.append(("paper shape, CPU", records["paper"]["phases_s"]))
        bars.append(("paper shape, V100 AMP\n(steps, eval projected)",
                     v100_projection(records["paper"])))
    segments = [*PHASES, "evaluation + checkpointing + logging", "other"]
    colors = dict(zip(segments, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(9, 1.1 + 0.7 * len(bars)), layout="constrained")
    for row, (label, phases) in enumerate(bars):
        total, left = sum(phases.values()), 0.0
        for segment in segments:
            share = 100 * phases.get(segment, 0.0) / total
            if share <= 0:
                continue
            ax.barh(row, share, left=left, color=colors[segment],
                    label=segment if segment not in ax.get_legend_handles_labels()[1] else None)
            if share >= 4:
                ax.text(left + share / 2, row, f"{phases[segment]:.0f} s", ha="center",
                        va="center", fontsize=8)
            left += share
        ax.text(101, row, f"{total:.0f} s", va="center", fontsize=9)
    ax.set_yticks(range(len(bars)), [label for label, _ in bars])
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("share of the job's wall time (%), seconds in the bars")
    ax.legend(ncols=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(bars) < 3 else -0.2))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(records: dict[str, dict]) -> str:
    rows = []
    for shape, record in records.items():
        phases, wall = record["phases_s"], record["wall_s"]
        outside = wall - phases["steps"]
        miou = record.get("best_val_miou")
        rows.append((shape, f"{wall:.0f}", *(f"{phases.get(p, 0.0):.1f}" for p in PHASES),
                     f"{phases['other']:.1f}", f"{100 * outside / wall:.1f}%",
                     "" if miou is None else f"{miou:.4f}"))
    return benchlib.markdown_table(("shape", "wall (s)", *PHASES, "other",
                                    "outside steps", "best val mIoU"), rows)


def main() -> None:
    args = parse_args()
    benchlib.setup_environment()
    benchlib.warn_if_busy()
    out = benchlib.RESULTS / f"breakdown{'-quick' * args.quick}.json"
    records = json.loads(out.read_text())["records"] if out.is_file() else {}
    for shape in args.shapes:
        if shape in records and not args.force:
            print(f"{shape}: done earlier, skipped (--force runs it again)")
            continue
        with benchlib.phase(f"{shape}: python -m jobs.train"):
            records[shape] = run_job(shape, quick=args.quick)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"before_demo_s": BEFORE_DEMO, "records": records},
                                  indent=2))
    print(table(records))
    draw(records, out.with_suffix(".png"))
    print(f"\nraw: {out}\nbars: {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
