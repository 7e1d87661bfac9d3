"""The per-worker training loop that Ray Train runs on every DDP worker.

It reads as Ray Train's own examples do: unpack the spec, build data, model and
optimizer, resume from Ray's checkpoint if there is one, then per epoch train, evaluate
and ``ray.train.report`` a checkpoint. What the worker tells the outside (MLflow, the
console, its timings) goes through one :class:`~pdml_ray.service.train.reporter.Reporter`.
"""

from __future__ import annotations

import logging
import math
import tempfile

import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from pdml_ray.config import Config, from_dict
from pdml_ray.data import build_dataset, pad_collate
from pdml_ray.engine import build_model_for, evaluate, make_optimizer, train_one_epoch
from pdml_ray.mining import build_miner
from pdml_ray.service.train.checkpoint import load_training_state, save_training_state, unwrap
from pdml_ray.service.train.reporter import Reporter, WorkerSpec
from pdml_ray.service.train.store import StoreClient, shard_of, store_actor_name

log = logging.getLogger(__name__)

UPLOAD_MODES = {"async": ray.train.CheckpointUploadMode.ASYNC,
                "sync": ray.train.CheckpointUploadMode.SYNC}


def build_loaders(cfg, rank: int, world: int):
    """(train set, val set, train loader, val loader, per-worker batch size) of worker
    ``rank`` of ``world``."""
    train_set = build_dataset(cfg.data, "train", augment_seed=cfg.train.seed)
    val_set = build_dataset(cfg.data, cfg.data.eval_split)
    local_batch = cfg.train.batch_size // world
    # Our own DistributedSampler, not the one prepare_data_loader would add: Ray rebuilds
    # the loader for it and drops persistent_workers, and its sampler's fixed seed would
    # give every run the same data order whatever train.seed says. One worker uses it too:
    # its order is then a function of (seed, epoch), not of torch's global stream or of
    # how many loader processes drew from a loader's generator.
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=True)
    train_loader = DataLoader(train_set, batch_size=local_batch, sampler=sampler, drop_last=True,
                              num_workers=cfg.data.loader_workers,
                              persistent_workers=cfg.data.loader_workers > 0)
    train_loader = ray.train.torch.prepare_data_loader(train_loader, add_dist_sampler=False)
    # Validation is sharded by hand, without the sampler's padding, so that the
    # all-reduced confusion matrix counts every image exactly once.
    val_shard = Subset(val_set, list(range(rank, len(val_set), world)))
    val_loader = DataLoader(val_shard, batch_size=max(local_batch, 1), collate_fn=pad_collate,
                            num_workers=cfg.data.loader_workers)
    return train_set, val_set, train_loader, val_loader, local_batch


def train_loop_per_worker(loop_config: dict) -> None:
    spec: WorkerSpec = loop_config["spec"]
    cfg = from_dict(spec.config).resolved()  # once, not in every step
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.train.seed + rank)
    device = ray.train.torch.get_device()

    train_set, val_set, train_loader, val_loader, _ = build_loaders(cfg, rank, world)
    model = build_model_for(cfg, train_set.num_classes, pretrained=cfg.model.pretrained)
    optimizer = make_optimizer(cfg, model)  # param groups need the unwrapped backbone/classifier
    model = ray.train.torch.prepare_model(model)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp and device.type == "cuda" else None
    step, start_epoch = resume(model, optimizer, scaler, device=device, rank=rank)

    steps_per_epoch = len(train_loader)
    total_steps = min(cfg.train.epochs * steps_per_epoch, cfg.train.max_steps or math.inf)
    last_epoch = min(cfg.train.epochs, math.ceil(total_steps / steps_per_epoch))
    miner = build_miner(cfg.loss, store=store_client(spec, cfg, rank), start_step=step)
    report = Reporter(spec, cfg, rank=rank, world=world, total_steps=total_steps,
                      steps_per_epoch=steps_per_epoch, last_epoch=last_epoch)

    for epoch in range(start_epoch, last_epoch):
        train_loader.sampler.set_epoch(epoch)  # the order ...
        train_set.set_epoch(epoch)  # ... and each sample's augmentation
        batches = report.epoch_started(train_loader, epoch=epoch, step=step,
                                       steps_per_epoch=steps_per_epoch)
        with report.clock("steps"):
            step = train_one_epoch(model, batches, optimizer, cfg=cfg, epoch=epoch,
                                   start_step=step, total_steps=total_steps, device=device,
                                   miner=report.watch(miner, epoch), scaler=scaler,
                                   on_log=report.on_log)
        if epoch + 1 < last_epoch and (epoch + 1) % cfg.train.eval_every_epochs:
            report.epoch_done(epoch)
            continue
        with report.clock("evaluation"):
            scores = evaluate(model, val_loader, num_classes=train_set.num_classes,
                              device=device)
        metrics = report.evaluation(scores, step=step, epoch=epoch, model=unwrap(model),
                                    val_set=val_set, device=device)
        with report.clock("checkpointing"):
            report_checkpoint(spec, cfg, metrics, scores, model=model, optimizer=optimizer,
                              scaler=scaler, step=step, epoch=epoch, rank=rank)
        report.epoch_done(epoch, scores)
    report.finish(step)


def resume(model, optimizer, scaler, *, device: torch.device, rank: int) -> tuple[int, int]:
    """Load Ray's checkpoint of this run, if it has one: ``(step, epoch)`` to go on from."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, 0
    with checkpoint.as_directory() as folder:
        state = load_training_state(folder, map_location=device)
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    log.info("rank %d resumed at step %d, epoch %d", rank, state["step"], state["epoch"])
    return state["step"], state["epoch"]


def store_client(spec: WorkerSpec, cfg: Config, rank: int) -> StoreClient | None:
    """This worker's client of its EmbeddingStore shard, when the run mines from one."""
    if spec.store_run is None:
        return None
    return StoreClient(store_actor_name(spec.store_run, shard_of(rank, cfg.loss.store_shards)),
                       rank=rank)


def report_checkpoint(spec: WorkerSpec, cfg: Config, metrics: dict, scores: dict, *, model,
                      optimizer, scaler, step: int, epoch: int, rank: int) -> None:
    """``ray.train.report`` the evaluation, with rank 0's checkpoint of the training state."""
    checkpoint = None
    if rank == 0:
        # Ray deletes the folder once it is copied to storage (async: later, from a thread
        # of its own, so it must outlive this call).
        folder = tempfile.mkdtemp(prefix="pdml-checkpoint-")
        save_training_state(folder, model=model, optimizer=optimizer, scaler=scaler, step=step,
                            epoch=epoch + 1, config=spec.config,
                            metrics={**metrics, "per_class_iou": scores["per_class_iou"]})
        checkpoint = ray.train.Checkpoint.from_directory(folder)
    ray.train.report(metrics, checkpoint=checkpoint,
                     checkpoint_upload_mode=UPLOAD_MODES[cfg.ray.checkpoint_upload],
                     delete_local_checkpoint_after_upload=True)
