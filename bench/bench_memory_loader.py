"""Peak memory per Ray worker, and data-loading throughput against the training step.

For each ``data.loader_workers`` value (default 0 and 2), one Ray Train run of 2 workers
executes, in every worker, the service's own pieces: the training and validation loaders
of ``pdml_ray.service.train.worker`` (``build_loaders``: the same DataLoader, sampler and Ray
wrapper), the model, optimizer and miner, ``engine.train_one_epoch`` and ``evaluate``.
It is not ``run_training`` itself, because the loader has to be timed alone and the
memory read inside the worker. In each worker:

1. loader alone: ``--loader-batches`` batches drawn from the training loader with no
   training, after 2 warm-up batches: images/s per worker;
2. training: ``--warmup + --steps`` steps; the step's images/s per worker (the engine's
   timer, mean over steps) and the mean time a step waits for its batch (the loader
   wrapped in a timer; Ray's wrapper loads the next batch before handing out this one);
3. one evaluation over the validation split, as every epoch of the service ends;
4. peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the worker process, and of
   its largest DataLoader process: ``RUSAGE_CHILDREN`` (processes that ended) or the
   ``VmHWM`` in Linux ``/proc`` (processes still alive); a loader process's RSS counts the
   pages it shares with the worker again. On GPU workers, also the peak GPU memory
   allocated by torch.

The loader is never what the step waits on when its images/s are well above the step's
and the data wait is a negligible share of the step.

    .venv/bin/python bench/bench_memory_loader.py [--loader-workers 0 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import ray

import benchlib


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[0, 2],
                        help="data.loader_workers values to measure")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="training steps dropped first")
    parser.add_argument("--loader-batches", type=int, default=30,
                        help="batches drawn from the loader alone")
    benchlib.add_config_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.loader_batches = 3, 1, 4
    return args


@ray.remote(num_cpus=0)
class Collector:
    """Receives each worker's measurements (Train V2 keeps no checkpoint-less reports)."""

    def __init__(self):
        self.results = {}

    def add(self, rank: int, result: dict) -> None:
        self.results[rank] = result

    def get(self) -> dict:
        return self.results


class WaitTimer:
    """Iterates ``loader`` and records the seconds spent waiting for each batch."""

    def __init__(self, loader):
        self.loader = loader
        self.waits: list[float] = []

    def __iter__(self):
        start = time.perf_counter()
        iterator = iter(self.loader)  # Ray's loader wrapper loads the first batch here
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waits.append(time.perf_counter() - start)
            yield batch
            start = time.perf_counter()


def live_children_peaks_mb() -> list[float]:
    """VmHWM of this process's live child processes (the DataLoader workers); Linux only."""
    me, peaks = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            if parent != me:
                continue
            with open(f"/proc/{pid}/status") as f:
                peaks += [int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")]
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return peaks


def measure_loop(loop_config: dict) -> None:
    """Ray Train's per-worker function: the service's loaders, model and engine, measured."""
    import ray.train
    import ray.train.torch
    import torch

    from pdml_ray.config import from_dict
    from pdml_ray.engine import evaluate, make_optimizer, train_one_epoch
    from pdml_ray.mining import build_miner
    from pdml_ray.models import build_model
    from pdml_ray.service.train.worker import build_loaders

    cfg = from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.train.seed + rank)
    device = ray.train.torch.get_device()
    train_set, _, train_loader, val_loader, local_batch = build_loaders(cfg, rank, world)

    warm, batches, drawn = 2, loop_config["loader_batches"], 0
    epoch = 0
    while drawn < warm + batches:
        if world > 1:
            train_loader.sampler.set_epoch(epoch)
        for _ in train_loader:
            drawn += 1
            if drawn == warm:
                start = time.perf_counter()
            if drawn == warm + batches:
                break
        epoch += 1
    loader_images_per_s = batches * local_batch / (time.perf_counter() - start)

    model = build_model(num_classes=train_set.num_classes, backbone=cfg.model.backbone,
                        output_stride=cfg.model.output_stride, head=cfg.model.head)
    optimizer = make_optimizer(cfg, model)
    model = ray.train.torch.prepare_model(model)
    miner = build_miner(cfg.loss, store=None, start_step=0)
    step_seconds: list[float] = []
    timed = WaitTimer(train_loader)

    def on_log(at_step: int, means: dict) -> None:
        step_seconds.append(local_batch / means["images_per_s"])

    step, total = 0, cfg.train.max_steps
    while step < total:
        if world > 1:
            train_loader.sampler.set_epoch(epoch)
        step = train_one_epoch(model, timed, optimizer, cfg=cfg, epoch=epoch, start_step=step,
                               total_steps=total, device=device, miner=miner, on_log=on_log)
        epoch += 1
    evaluate(model, val_loader, num_classes=train_set.num_classes, device=device)

    skip = loop_config["warmup"]
    result = {"loader_images_per_s": loader_images_per_s,
              "step_seconds": step_seconds[skip:], "wait_seconds": timed.waits[skip:total],
              "local_batch": local_batch, "threads": torch.get_num_threads(),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "peak_gpu_mb": (torch.cuda.max_memory_allocated(device) / 2**20
                              if device.type == "cuda" else None),
              "loader_process_peak_mb": max([resource.getrusage(resource.RUSAGE_CHILDREN)
                                             .ru_maxrss / 1024, *live_children_peaks_mb()])}
    ray.get(loop_config["collector"].add.remote(rank, result))


def run(cfg, args) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pdml_ray.service.train.driver import unique_run_name

    collector = Collector.remote()
    trainer = TorchTrainer(
        measure_loop,
        train_loop_config={"config": cfg.to_dict(), "collector": collector,
                           "loader_batches": args.loader_batches, "warmup": args.warmup},
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker={"CPU": cfg.ray.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.ray.use_gpu
                                                              else {})}),
        run_config=RunConfig(name=unique_run_name("bench-memory"),
                             storage_path=cfg.ray.storage_path),
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    per_rank = ray.get(collector.get.remote())
    ray.kill(collector)
    return per_rank


def main() -> None:
    args = parse_args()
    benchlib.setup_environment()
    from pdml_ray.service.train.driver import prepare_data
    from pdml_ray.service.runtime import configure_logging, ray_session

    configure_logging()
    cfg = benchlib.bench_config(args, {"train.max_steps": args.warmup + args.steps,
                                       "train.log_every_steps": 1, "ray.max_failures": 0},
                                experiment="bench-memory")
    prepare_data(cfg)
    benchlib.warn_if_busy()
    runs = {}
    with ray_session(cfg.ray.address):
        for workers in args.loader_workers:
            with benchlib.phase(f"data.loader_workers={workers}"):
                runs[workers] = run(cfg.replace(**{"data.loader_workers": workers}), args)

    rows = []
    for workers, per_rank in runs.items():
        ranks = [per_rank[r] for r in sorted(per_rank)]
        step = sum(s for r in ranks for s in r["step_seconds"]) / sum(
            len(r["step_seconds"]) for r in ranks)
        wait = sum(w for r in ranks for w in r["wait_seconds"]) / sum(
            len(r["wait_seconds"]) for r in ranks)
        local_batch = ranks[0]["local_batch"]
        loader = min(r["loader_images_per_s"] for r in ranks)
        children = max(r["loader_process_peak_mb"] for r in ranks)
        memory = " / ".join(f"{r['peak_rss_mb']:.0f}" for r in ranks)
        if ranks[0]["peak_gpu_mb"] is not None:
            memory += " (GPU " + " / ".join(f"{r['peak_gpu_mb']:.0f}" for r in ranks) + ")"
        rows.append((workers, memory,
                     f"{children:.0f}" if workers else "n/a", f"{loader:.1f}",
                     f"{local_batch / step:.1f}", f"{loader * step / local_batch:.1f}x",
                     f"{1e3 * wait:.1f}", f"{100 * wait / step:.1f}%"))
    print(f"\n{benchlib.describe_config(cfg)}; {args.steps} timed steps, "
          f"{args.loader_batches} loader-only batches; images/s are per worker "
          f"({ranks[0]['threads']} thread(s) each)\n")
    print(benchlib.markdown_table(
        ("data.loader_workers", "peak RSS per worker, rank 0 / 1 (MB)",
         "peak RSS per loader process (MB)", "loader alone (img/s)", "training step (img/s)",
         "loader / step", "mean data wait per step (ms)", "data wait / step"), rows))
    path = benchlib.write_json("memory_loader", {"args": vars(args), "config": cfg.to_dict(),
                                                 "runs": runs}, quick=args.quick)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
