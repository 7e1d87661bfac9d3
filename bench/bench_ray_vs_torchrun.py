"""Ray Train (2 workers) against plain torchrun DDP (gloo, 2 processes): median step time.

Both sides train the same config (model, synthetic scenes, global batch, supervision,
``global`` mining, seed) for ``--warmup + --steps`` steps through the same
``engine.train_one_epoch``, and time each step the same way: the engine's own timer,
reported through ``on_log`` every step (``train.log_every_steps=1``). Evaluation and the
checkpoint come only after the last timed step (``train.eval_every_epochs`` larger than
the run, ``train.max_steps``), so they are not timed.

- Ray: ``pdml_ray.service.train.driver.run_training`` on a private local Ray
  (``ray_session``): the service exactly as a user runs it, so its overheads (Train's
  worker group and data-loader wrapper, rank 0's MLflow writes) are what is measured.
  Per-step times come from the ``images_per_s`` metric rank 0 logs to MLflow.
- torchrun: ``bench/torchrun_worker.py`` under ``torchrun --standalone --nproc_per_node 2``
  with the same threads per process as a Ray worker gets (``OMP_NUM_THREADS`` = CPUs per
  worker) and the same scheduling priority: Ray starts its worker processes at niceness
  15, so on a machine shared with other work a torchrun at niceness 0 would win the CPUs.

Two timings per step: ``loop`` = global batch / ``images_per_s`` (rank 0, from the end of
one report to the end of the next step; rank 0's own logging is outside it) and ``wall``
= gap between consecutive reports (holds rank 0's MLflow write on the Ray side). The
figure is the ratio of median ``loop`` times, Ray / torchrun; target <= 1.05. The Ray side
also records the CPU seconds of every process of the job by name (the workers, Ray's
daemons and actors, the driver): on 2 cores, what is not a worker is taken from a step.

    .venv/bin/python bench/bench_ray_vs_torchrun.py [--steps 40] [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from pdml_ray.config import dump_config

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped before timing")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per side, alternating which side goes first")
    parser.add_argument("--torchrun-niceness", type=int, default=15,
                        help="niceness of the torchrun processes (Ray's workers run at 15)")
    benchlib.add_config_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.repeats = 4, 1, 1
    return args


def run_torchrun(cfg, config_path: Path, warmup: int, niceness: int) -> dict:
    out = config_path.with_name(config_path.name.replace("-config.yaml", "-torchrun-steps.json"))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": str(max(int(cfg.ray.cpus_per_worker), 1))}
    command = [str(torchrun), "--standalone", "--nproc_per_node", str(cfg.ray.num_workers),
               str(HERE / "torchrun_worker.py"), "--config", str(config_path), "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=benchlib.REPO,
                   preexec_fn=lambda: os.nice(niceness))
    job_seconds = time.perf_counter() - start
    record = json.loads(out.read_text())
    rows = [s for s in record["steps"] if s["step"] > warmup]
    batch = cfg.train.batch_size
    return {"loop": [batch / s["images_per_s"] for s in rows],
            "wall": [b["time"] - a["time"] for a, b in zip(rows, rows[1:])],
            "job_seconds": job_seconds, "threads": record["threads"],
            "backend": record["backend"]}


def run_ray(cfg, warmup: int) -> dict:
    from pdml_ray.service.train.driver import run_training
    from pdml_ray.service.runtime import ray_session

    start = time.perf_counter()
    # What each process of the job (driver, Ray's daemons and actors, the workers) used:
    # on 2 cores, every CPU second outside the workers is taken from a step.
    with benchlib.ProcessCpu() as cpu, ray_session(cfg.ray.address):
        result = run_training(cfg)
    job_seconds = time.perf_counter() - start
    times = benchlib.step_times(cfg.mlflow.tracking_uri, result.mlflow_run_id,
                                global_batch=cfg.train.batch_size, warmup=warmup)
    return {**times, "job_seconds": job_seconds, "mlflow_run_id": result.mlflow_run_id,
            "cpu_seconds_by_process": cpu.by_label()}


def main() -> None:
    args = parse_args()
    benchlib.setup_environment()
    from pdml_ray.service.train.driver import prepare_data
    from pdml_ray.service.runtime import configure_logging

    configure_logging()
    total = args.warmup + args.steps
    cfg = benchlib.bench_config(args, {
        "train.supervision": "point+pdml", "loss.mining": "global",
        "train.max_steps": total, "train.epochs": 1000, "train.eval_every_epochs": 1000,
        "train.log_every_steps": 1, "data.max_val_images": 4, "ray.max_failures": 0,
        "ray.keep_checkpoints": 1}, experiment="bench-ray-vs-torchrun")
    prepare_data(cfg)
    config_path = benchlib.RESULTS / f"ray_vs_torchrun{'-quick' if args.quick else ''}-config.yaml"
    config_path.write_text(dump_config(cfg))
    benchlib.warn_if_busy()

    runs: dict[str, list[dict]] = {"torchrun": [], "ray": []}
    for repeat in range(args.repeats):
        order = ("torchrun", "ray") if repeat % 2 == 0 else ("ray", "torchrun")
        for side in order:
            with benchlib.phase(f"{side}, repeat {repeat + 1}/{args.repeats}"):
                runs[side].append(
                    run_torchrun(cfg, config_path, args.warmup, args.torchrun_niceness)
                    if side == "torchrun" else run_ray(cfg, args.warmup))

    def pooled(side: str, key: str) -> list[float]:
        return [t for run in runs[side] for t in run[key]]

    summary = {side: {"loop_median": benchlib.median(pooled(side, "loop")),
                      "loop_p90": benchlib.percentile(pooled(side, "loop"), 90),
                      "wall_median": benchlib.median(pooled(side, "wall")),
                      "job_seconds": [run["job_seconds"] for run in runs[side]]}
               for side in runs}
    ratio = summary["ray"]["loop_median"] / summary["torchrun"]["loop_median"]
    wall_ratio = summary["ray"]["wall_median"] / summary["torchrun"]["wall_median"]

    print(f"\n{benchlib.describe_config(cfg)}; {args.steps} timed steps after {args.warmup} "
          f"warm-up steps, {args.repeats} run(s) per side; torchrun: "
          f"{runs['torchrun'][0]['threads']} thread(s) per process, "
          f"{runs['torchrun'][0]['backend']}, niceness {args.torchrun_niceness}\n")
    labels = {"torchrun": "torchrun DDP (`bench/torchrun_worker.py`)",
              "ray": "Ray Train (`run_training`)"}
    rows = [(labels[side], f"{s['loop_median']:.3f}", f"{s['loop_p90']:.3f}",
             f"{s['wall_median']:.3f}", " / ".join(f"{j:.0f}" for j in s["job_seconds"]))
            for side, s in summary.items()]
    rows.append(("**Ray / torchrun**", f"**{ratio:.3f}** (target <= 1.05)", "",
                 f"{wall_ratio:.3f}", ""))
    print(benchlib.markdown_table(("side", "median step, loop (s)", "p90 step, loop (s)",
                                   "median step, wall (s)", "job incl. start-up (s)"), rows))
    path = benchlib.write_json("ray_vs_torchrun", {
        "args": vars(args), "config": cfg.to_dict(), "runs": runs, "summary": summary,
        "ratio_loop": ratio, "ratio_wall": wall_ratio}, quick=args.quick)
    print(f"raw results: {path}")
    print("\nCPU seconds by process on the Ray side (first run), share of its wall time:")
    first = runs["ray"][0]
    for label, seconds in list(first["cpu_seconds_by_process"].items())[:15]:
        print(f"  {seconds:8.1f} s  {100 * seconds / first['job_seconds']:5.1f}%  {label}")


if __name__ == "__main__":
    main()
