"""The EmbeddingStore actor under 2 to 16 concurrent clients, and a model of 64 V100 workers.

Every client is a Ray actor doing what a training worker's ``StoreClient`` does each step:
``push`` its points (fire and forget) and fetch a sample of ``loss.store_samples`` rows,
back to back with no compute in between, so the store is as busy as those clients can
make it. Per client count and payload (the demo's D = 512, 4 images x 8 points; the
paper's D = 2048, 8 images x 14 points; 512 rows sampled) it records the round trip of
push + sample and the store's throughput (push + sample pairs per second, all clients).

The model: one actor serves requests one at a time, so its service time per pair is
``S = 1 / throughput`` at saturation (the most clients); with 64 workers each doing one
pair per step of ``T`` seconds (the paper's step on a V100 with AMP, 0.088 s from
``bench_flops.py``) the actor is busy ``rho = 64 S / T`` of the time. Below 1 the queue is
stable and a pair waits ``W = rho S / (2 (1 - rho))`` (M/D/1) before its ``S``; the miner
requests the next step's sample while the current step computes (prefetch), so a step
waits ``max(0, S + W - T)`` for the store. Two ways to shard over ``k`` actors: by class,
each actor holds a ``k``-th of the classes and serves all 64 workers, which divides the
bytes of a pair by ``k`` but not its fixed cost (``S = o + bytes / B``, fitted on the two
payloads); by worker group, each actor holds the points of ``64 / k`` workers and serves
only them (a worker still mines across the images of its group's workers and steps),
which divides the requests.

This machine has 2 cores: the clients' own (de)serialisation competes with the actor, so
the measured service times are upper bounds of what a dedicated store node would give.

    .venv/bin/python bench/bench_store_scaling.py [--clients 2,4,8,16] [--iterations 60]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import ray

import benchlib

PAYLOADS = {"demo": (512, 4 * 8), "paper": (2048, 8 * 14)}  # (D, points pushed per step)
SAMPLES = 512  # loss.store_samples
CAPACITY = 8192  # loss.store_capacity
WORKERS = 64
V100_AMP_STEP_S = 0.088  # the paper's step at 35% of V100 FP16 peak (bench_flops.py)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="2,4,8,16")
    parser.add_argument("--iterations", type=int, default=60, help="pairs per client")
    parser.add_argument("--quick", action="store_true", help="2 and 4 clients, 10 pairs")
    args = parser.parse_args()
    args.clients = [int(n) for n in args.clients.split(",")]
    if args.quick:
        args.clients, args.iterations = [2, 4], 10
    return args


@ray.remote(num_cpus=0)
class Client:
    def run(self, store, rank: int, *, dim: int, points: int, iterations: int,
            start_at: float) -> list[float]:
        rng = np.random.default_rng(rank)
        embeddings = rng.standard_normal((points, dim), dtype=np.float32)
        labels, image_ids = rng.integers(0, 8, points), rng.integers(0, 10_000, points)
        while time.time() < start_at:  # every client starts together
            time.sleep(0.001)
        seconds = []
        for step in range(iterations):
            tick = time.perf_counter()
            store.push.remote(embeddings, labels, image_ids, rank, step)
            ray.get(store.sample.remote(SAMPLES, step=step, max_staleness=10**9))
            seconds.append(time.perf_counter() - tick)
        return seconds


def measure(clients: int, dim: int, points: int, iterations: int) -> dict:
    from pdml_ray.service.train.driver import unique_run_name
    from pdml_ray.service.train.store import create_store

    store = create_store(unique_run_name("bench-scaling"), CAPACITY)
    filler = np.zeros((CAPACITY, dim), np.float32)
    ray.get(store.push.remote(filler, np.zeros(CAPACITY, np.int64), np.arange(CAPACITY), -1, 0))
    users = [Client.remote() for _ in range(clients)]
    ray.get([user.__ray_ready__.remote() for user in users])
    start_at = time.time() + 1.0
    timings = ray.get([user.run.remote(store, rank, dim=dim, points=points,
                                       iterations=iterations, start_at=start_at)
                       for rank, user in enumerate(users)])
    wall = max(sum(t) for t in timings)
    for actor in (*users, store):
        ray.kill(actor)
    trips = [t for per_client in timings for t in per_client[3:]]  # after warm-up
    return {"clients": clients, "round_trip_median_s": benchlib.median(trips),
            "round_trip_p90_s": benchlib.percentile(trips, 90),
            "pairs_per_s": clients * iterations / wall}


def model(service_s: float, *, step_s: float = V100_AMP_STEP_S, workers: int = WORKERS
          ) -> dict[str, float]:
    """Utilisation, queueing wait and the step's wait after prefetch (see the docstring)."""
    rho = workers * service_s / step_s
    if rho >= 1:
        return {"utilisation": rho, "queue_wait_s": math.inf, "step_wait_s": math.inf,
                "step_wait_share": math.inf}
    queue = rho * service_s / (2 * (1 - rho))
    wait = max(0.0, service_s + queue - step_s)
    return {"utilisation": rho, "queue_wait_s": queue, "step_wait_s": wait,
            "step_wait_share": wait / step_s}


def fit_service(measured: dict[str, dict]) -> tuple[float, float]:
    """``S = o + bytes / B`` through the two payloads' saturated service times."""
    sizes = {name: 4 * dim * (points + SAMPLES) for name, (dim, points) in PAYLOADS.items()}
    s_demo, s_paper = (1 / measured[name]["pairs_per_s"] for name in ("demo", "paper"))
    per_byte = max((s_paper - s_demo) / (sizes["paper"] - sizes["demo"]), 1e-12)
    fixed = max(s_demo - per_byte * sizes["demo"], 0.0)
    return fixed, per_byte


def draw(results: dict[str, list[dict]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for name, rows in results.items():
        clients = [row["clients"] for row in rows]
        left.plot(clients, [1e3 * row["round_trip_median_s"] for row in rows], "o-",
                  label=f"{name} (D = {PAYLOADS[name][0]})")
        right.plot(clients, [row["pairs_per_s"] for row in rows], "o-", label=name)
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks([row["clients"] for row in next(iter(results.values()))])
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_xlabel("concurrent clients")
        axis.grid(alpha=0.3)
        axis.legend()
    left.set_ylabel("push + sample round trip, median (ms)")
    right.set_ylabel("store throughput (pairs / s)")
    fig.suptitle("EmbeddingStore: one actor, clients pushing and sampling back to back "
                 "(2-core machine)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    benchlib.setup_environment()
    from pdml_ray.service.runtime import configure_logging, ray_session

    configure_logging()
    benchlib.warn_if_busy()
    results: dict[str, list[dict]] = {name: [] for name in PAYLOADS}
    with ray_session():
        for name, (dim, points) in PAYLOADS.items():
            for clients in args.clients:
                with benchlib.phase(f"{name}: {clients} clients"):
                    results[name].append(measure(clients, dim, points, args.iterations))
    saturated = {name: max(rows, key=lambda row: row["pairs_per_s"])
                 for name, rows in results.items()}
    fixed, per_byte = fit_service(saturated)
    projections = {}
    for name, (dim, points) in PAYLOADS.items():
        size = 4 * dim * (points + SAMPLES)
        for shards in (1, 2, 4, 8, 16):
            by_class = fixed + per_byte * size / shards
            projections[f"{name}, {shards} shard(s) by class"] = {
                "shards": shards, "service_s": by_class, **model(by_class)}
            if shards > 1:
                by_group = fixed + per_byte * size
                projections[f"{name}, {shards} shards by worker group"] = {
                    "shards": shards, "service_s": by_group,
                    **model(by_group, workers=WORKERS // shards)}
    print(benchlib.markdown_table(
        ("payload", "clients", "round trip median (ms)", "p90 (ms)", "pairs / s"),
        [(name, row["clients"], f"{1e3 * row['round_trip_median_s']:.1f}",
          f"{1e3 * row['round_trip_p90_s']:.1f}", f"{row['pairs_per_s']:.0f}")
         for name, rows in results.items() for row in rows]))
    print(f"\nservice time per pair S = {1e3 * fixed:.2f} ms + bytes / "
          f"{1e-9 / per_byte:.2f} GB/s\n")
    print(benchlib.markdown_table(
        ("64 V100 workers", "S (ms)", "utilisation", "queue wait (ms)",
         "step wait after prefetch (% of a 0.088 s step)"),
        [(label, f"{1e3 * p['service_s']:.2f}", f"{p['utilisation']:.2f}",
          "saturated" if math.isinf(p["queue_wait_s"]) else f"{1e3 * p['queue_wait_s']:.1f}",
          "saturated" if math.isinf(p["step_wait_share"]) else f"{100 * p['step_wait_share']:.1f}%")
         for label, p in projections.items()]))
    path = benchlib.write_json("store_scaling", {
        "args": vars(args), "results": results, "fit": {"fixed_s": fixed, "per_byte_s": per_byte},
        "projection_64_v100": projections}, quick=args.quick)
    draw(results, path.with_suffix(".png"))
    print(f"raw results: {path}\ncurve: {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
