"""EmbeddingStore overhead per training step, and the store actor's round trip from 2 workers.

1. Step overhead: two runs of ``run_training`` (2 Ray workers, ``point+pdml``, logged every
   step) with the same config and seed except ``loss.mining``: ``global`` against
   ``global+store``. Per-step times come from the ``images_per_s`` metric rank 0 logs
   (warm-up steps dropped), as in ``bench_ray_vs_torchrun.py``. Two estimates:
   - difference: median step with the store / median step without, minus 1;
   - direct: the ``store_latency_ms`` rank 0 logs (waiting for the sample requested one
     step earlier, mining and scoring the store triplets, pushing this step's points and
     requesting the next sample), over the median step without the store.
   Target: under 5%.
2. Round trip: a store actor started as the driver starts it (``create_store``: no CPU)
   and two Ray actors holding one CPU each, standing in for the two training workers,
   each timing ``--iterations`` of ``push`` (one local batch of points) followed by
   ``ray.get(sample)`` (``loss.store_samples`` rows) at the same time, on a store filled
   to capacity. Payloads: the demo (D = 512, 4 images x 8 points) and the paper
   (D = 2048, 8 images x 14 points).

    .venv/bin/python bench/bench_store.py [--steps 40] [--iterations 200] [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray

import benchlib

PAYLOADS = {"demo": (512, 4 * 8), "paper": (2048, 8 * 14)}  # (D, points pushed per step)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped before timing")
    parser.add_argument("--iterations", type=int, default=200,
                        help="push + sample round trips per worker")
    benchlib.add_config_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.iterations = 4, 1, 20
    return args


@ray.remote(num_cpus=1)
class StoreUser:
    """Pushes and samples like a training worker's ``StoreClient``, timing each round trip."""

    def run(self, store, rank: int, *, dim: int, points: int, samples: int,
            iterations: int) -> list[float]:
        rng = np.random.default_rng(rank)
        embeddings = rng.standard_normal((points, dim), dtype=np.float32)
        labels = rng.integers(0, 8, points)
        image_ids = rng.integers(0, 10_000, points)
        seconds = []
        for step in range(iterations):
            start = time.perf_counter()
            store.push.remote(embeddings, labels, image_ids, rank, step)
            ray.get(store.sample.remote(samples, step=step, max_staleness=10**9))
            seconds.append(time.perf_counter() - start)
        return seconds


def round_trips(cfg, iterations: int, workers: int) -> dict[str, list[float]]:
    from pdml_ray.service.train.driver import unique_run_name
    from pdml_ray.service.train.store import create_store

    results = {}
    for name, (dim, points) in PAYLOADS.items():
        store = create_store(unique_run_name("bench-store"), cfg.loss.store_capacity)
        filler = np.zeros((cfg.loss.store_capacity, dim), np.float32)
        ray.get(store.push.remote(filler, np.zeros(len(filler), np.int64),
                                  np.arange(len(filler)), -1, 0))
        users = [StoreUser.remote() for _ in range(workers)]
        timings = ray.get([user.run.remote(store, rank, dim=dim, points=points,
                                           samples=cfg.loss.store_samples, iterations=iterations)
                           for rank, user in enumerate(users)])
        results[name] = [t for per_worker in timings for t in per_worker[5:]]  # after warm-up
        for actor in (*users, store):
            ray.kill(actor)
    return results


def main() -> None:
    args = parse_args()
    benchlib.setup_environment()
    from pdml_ray.service.train.driver import run_training
    from pdml_ray.service.runtime import configure_logging, ray_session

    configure_logging()
    cfg = benchlib.bench_config(args, {
        "train.supervision": "point+pdml", "loss.mining": "global",
        "train.max_steps": args.warmup + args.steps, "train.epochs": 1000,
        "train.eval_every_epochs": 1000, "train.log_every_steps": 1, "data.max_val_images": 4,
        "ray.max_failures": 0, "ray.keep_checkpoints": 1}, experiment="bench-store")
    benchlib.warn_if_busy()
    runs = {}
    with ray_session(cfg.ray.address):
        for mining in ("global", "global+store"):
            with benchlib.phase(f"training, mining {mining}"):
                run_cfg = cfg.replace(**{"loss.mining": mining})
                result = run_training(run_cfg)
                times = benchlib.step_times(cfg.mlflow.tracking_uri, result.mlflow_run_id,
                                            global_batch=cfg.train.batch_size, warmup=args.warmup)
                latency = [value / 1e3 for step, value, _ in benchlib.metric_history(
                    cfg.mlflow.tracking_uri, result.mlflow_run_id, "store_latency_ms")
                    if step > args.warmup]
                hits = [value for step, value, _ in benchlib.metric_history(
                    cfg.mlflow.tracking_uri, result.mlflow_run_id, "store_hit")]
                runs[mining] = {**times, "store_latency": latency, "store_hit": hits,
                                "mlflow_run_id": result.mlflow_run_id}
        with benchlib.phase("push + sample round trips"):
            trips = round_trips(cfg, args.iterations, cfg.ray.num_workers)

    base = benchlib.median(runs["global"]["loop"])
    with_store = benchlib.median(runs["global+store"]["loop"])
    latency = benchlib.median(runs["global+store"]["store_latency"])
    hit_rate = (sum(runs["global+store"]["store_hit"]) / len(runs["global+store"]["store_hit"])
                if runs["global+store"]["store_hit"] else float("nan"))
    summary = {"step_global": base, "step_store": with_store,
               "overhead_difference": with_store / base - 1, "store_latency": latency,
               "overhead_direct": latency / base, "store_hit_rate": hit_rate,
               "round_trip": {name: {"median": benchlib.median(t),
                                     "p90": benchlib.percentile(t, 90)}
                              for name, t in trips.items()}}

    print(f"\n{benchlib.describe_config(cfg, mining=False)}; {args.steps} timed steps after "
          f"{args.warmup} warm-up steps; store capacity {cfg.loss.store_capacity}, "
          f"{cfg.loss.store_samples} samples per step, store weight {cfg.loss.store_weight}\n")
    print(benchlib.markdown_table(
        ("mining", "median step (s)", "store time per step, rank 0 (ms)", "steps using store "
         "triplets", "overhead: difference of medians", "overhead: store time / step "
         "(target < 5%)"),
        [("global", f"{base:.3f}", "", "", "", ""),
         ("global+store", f"{with_store:.3f}", f"{1e3 * latency:.1f}", f"{100 * hit_rate:.0f}%",
          f"{100 * summary['overhead_difference']:+.1f}%",
          f"**{100 * summary['overhead_direct']:.1f}%**")]))
    print(benchlib.markdown_table(
        ("payload", "pushed per step", f"sampled ({cfg.loss.store_samples} rows)",
         f"push + sample, median of {cfg.ray.num_workers} workers at once (ms)", "p90 (ms)"),
        [(name, f"{points} x {dim} float32", f"{cfg.loss.store_samples} x {dim}",
          f"{1e3 * summary['round_trip'][name]['median']:.1f}",
          f"{1e3 * summary['round_trip'][name]['p90']:.1f}")
         for name, (dim, points) in PAYLOADS.items()]))
    path = benchlib.write_json("store", {"args": vars(args), "config": cfg.to_dict(), "runs": runs,
                                         "round_trips": trips, "summary": summary},
                               quick=args.quick)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
