"""One process of the plain-DDP side of ``bench_ray_vs_torchrun.py``.

The service's per-worker loop without Ray: the same ``build_dataset`` data under a
``DistributedSampler``, the same model and optimizer wrapped in DDP, the same miner
scope (``build_miner``; the global miner only needs an initialised process group), the
same ``engine.train_one_epoch``, and on rank 0 the same dis(+)/dis(-) recorder the
service runs there. No evaluation, checkpoints or MLflow. Rank 0 writes, per step, the
engine's ``images_per_s`` (times the world size, as the service logs it) and the wall
time at which it was reported.

    .venv/bin/torchrun --standalone --nproc_per_node 2 bench/torchrun_worker.py \\
        --config bench/results/ray_vs_torchrun-config.yaml --out steps.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from pdml_ray.config import load_config
from pdml_ray.data import build_dataset
from pdml_ray.engine import make_optimizer, train_one_epoch
from pdml_ray.mining import build_miner
from pdml_ray.models import build_model
from pdml_ray.service.train.diagnostics import DistanceRecorder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config with absolute paths")
    parser.add_argument("--out", required=True, help="JSON file rank 0 writes its step times to")
    args = parser.parse_args()
    cfg = load_config(args.config)

    use_gpu = cfg.ray.use_gpu
    dist.init_process_group("nccl" if use_gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if use_gpu else "cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.train.seed + rank)

    train_set = build_dataset(cfg.data, "train")
    local_batch = cfg.train.batch_size // world
    sampler = DistributedSampler(train_set, shuffle=True)
    loader = DataLoader(train_set, batch_size=local_batch, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.loader_workers,
                        persistent_workers=cfg.data.loader_workers > 0)
    model = build_model(num_classes=train_set.num_classes, backbone=cfg.model.backbone,
                        output_stride=cfg.model.output_stride, head=cfg.model.head,
                        pretrained=cfg.model.pretrained).to(device)
    optimizer = make_optimizer(cfg, model)
    model = DistributedDataParallel(model, device_ids=[device] if use_gpu else None)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp and use_gpu else None

    total_steps = cfg.train.epochs * len(loader)
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    miner = build_miner(cfg.loss, store=None, start_step=0)
    distances = (DistanceRecorder.for_run(cfg, total_steps=total_steps, steps_per_epoch=len(loader))
                 if rank == 0 and cfg.uses_pdml else None)
    steps: list[dict] = []

    def on_log(at_step: int, means: dict) -> None:
        steps.append({"step": at_step, "images_per_s": means["images_per_s"] * world,
                      "time": time.time()})

    step = 0
    for epoch in range(cfg.train.epochs):
        if step >= total_steps:
            break
        sampler.set_epoch(epoch)
        step = train_one_epoch(model, loader, optimizer, cfg=cfg, epoch=epoch, start_step=step,
                               total_steps=total_steps, device=device,
                               miner=distances.watch(miner, epoch) if distances else miner,
                               scaler=scaler, on_log=on_log)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump({"world_size": world, "threads": torch.get_num_threads(),
                       "backend": dist.get_backend(), "steps": steps}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
