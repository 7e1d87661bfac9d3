"""The per-worker training loop that Ray Train runs on every DDP worker."""

from __future__ import annotations

import logging
import math
import tempfile
import time

import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from pdml_ray.config import from_dict
from pdml_ray.data import build_dataset, pad_collate
from pdml_ray.data.transforms import to_model_input
from pdml_ray.engine import build_model_for, evaluate, make_optimizer, train_one_epoch
from pdml_ray.mining import build_miner
from pdml_ray.reports import markdown_table, prediction_grid
from pdml_ray.service.train.checkpoint import load_training_state, save_training_state
from pdml_ray.service.train.diagnostics import DistanceRecorder
from pdml_ray.service.train.phases import PhaseClock
from pdml_ray.service.train.progress import WorkerProgress
from pdml_ray.service.train.store import StoreClient, shard_of, store_actor_name
from pdml_ray.service.tracking import MetricLogger, metric_key, start_system_metrics

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 4  # validation images drawn as image | truth | prediction at each evaluation
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
    cfg = from_dict(loop_config["config"]).resolved()  # once, not in every step
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.train.seed + rank)
    device = ray.train.torch.get_device()

    train_set, val_set, train_loader, val_loader, local_batch = build_loaders(cfg, rank, world)
    model = build_model_for(cfg, train_set.num_classes, pretrained=cfg.model.pretrained)
    optimizer = make_optimizer(cfg, model)  # param groups need the unwrapped backbone/classifier
    model = ray.train.torch.prepare_model(model)
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    step, start_epoch = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_training_state(folder, map_location=device)
        getattr(model, "module", model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        step, start_epoch = state["step"], state["epoch"]
        log.info("rank %d resumed at step %d, epoch %d", rank, step, start_epoch)

    steps_per_epoch = len(train_loader)
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    last_epoch = min(cfg.train.epochs, math.ceil(total_steps / steps_per_epoch))
    store = (StoreClient(store_actor_name(loop_config["store_run"],
                                          shard_of(rank, cfg.loss.store_shards)), rank=rank)
             if loop_config.get("store_run") else None)
    miner = build_miner(cfg.loss, store=store, start_step=step)
    tracker = MetricLogger(loop_config["tracking_uri"], loop_config["run_id"]) if rank == 0 else None
    monitor = (start_system_metrics(loop_config["tracking_uri"], loop_config["run_id"],
                                    every_s=loop_config.get("system_metrics_every_s", 10.0))
               if tracker is not None else None)
    console = (WorkerProgress(loop_config["progress_board"], rank=rank,
                              forward_warnings=loop_config.get("forward_warnings", False))
               if loop_config.get("progress_board") else None)
    epoch_losses: list[float] = []
    clock = PhaseClock()  # where this worker's time goes, logged as time/<phase>_s
    first_step_unix = None  # reported to the driver, which measures start-up from it
    distances = (DistanceRecorder.for_run(cfg, total_steps=total_steps,
                                          steps_per_epoch=steps_per_epoch)
                 if tracker is not None and cfg.uses_pdml else None)  # the paper's Figure 4

    def on_log(at_step: int, means: dict) -> None:
        epoch_losses.append(means["loss"])
        if console is not None:
            console.loss = means["loss"]
        if tracker is not None:
            means["images_per_s"] = means["images_per_s"] * world
            with clock("logging"):
                tracker.log(means, step=at_step)
            log.debug("step %d/%d  loss %.4f  lr %.2e  %.1f img/s", at_step, total_steps,
                      means["loss"], means["lr"], means["images_per_s"])

    for epoch in range(start_epoch, cfg.train.epochs):
        if step >= total_steps:
            break
        train_loader.sampler.set_epoch(epoch)  # the order ...
        train_set.set_epoch(epoch)  # ... and each sample's augmentation
        started, epoch_losses[:] = time.monotonic(), []
        batches = (console.batches(train_loader, epoch=epoch + 1, epochs=last_epoch,
                                   total=min(steps_per_epoch, total_steps - step))
                   if console is not None else train_loader)
        first_step_unix = first_step_unix or time.time()
        with clock("steps"):
            step = train_one_epoch(model, batches, optimizer, cfg=cfg, epoch=epoch,
                                   start_step=step, total_steps=total_steps, device=device,
                                   miner=distances.watch(miner, epoch) if distances else miner,
                                   scaler=scaler, on_log=on_log)
        last = epoch + 1 == cfg.train.epochs or step >= total_steps
        if not last and (epoch + 1) % cfg.train.eval_every_epochs:
            if console is not None:
                console.epoch_done(epoch + 1, last_epoch, time.monotonic() - started,
                                   loss=_mean(epoch_losses))
            continue
        with clock("evaluation"):
            scores = evaluate(model, val_loader, num_classes=train_set.num_classes,
                              device=device)
        metrics = {"val_miou": scores["miou"], "val_pixel_acc": scores["pixel_acc"],
                   "epoch": epoch + 1, "step": step, "first_step_unix": first_step_unix,
                   **clock.metrics()}  # the driver's end-of-run summary reads these
        if tracker is not None:
            with clock("logging"):
                log_evaluation(tracker, scores, step=step, epoch=epoch,
                               model=getattr(model, "module", model), val_set=val_set,
                               device=device)
        with clock("checkpointing"):
            report_checkpoint = None
            if rank == 0:
                # Ray deletes the folder once it is copied to storage (async: later, from
                # a thread of its own, so it must outlive this block).
                folder = tempfile.mkdtemp(prefix="pdml-checkpoint-")
                save_training_state(folder, model=model, optimizer=optimizer, scaler=scaler,
                                    step=step, epoch=epoch + 1, config=loop_config["config"],
                                    metrics={**metrics, "per_class_iou": scores["per_class_iou"]})
                report_checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=report_checkpoint,
                             checkpoint_upload_mode=UPLOAD_MODES[cfg.ray.checkpoint_upload],
                             delete_local_checkpoint_after_upload=True)
        if console is not None:
            console.epoch_done(epoch + 1, last_epoch, time.monotonic() - started,
                               loss=_mean(epoch_losses), val_miou=scores["miou"],
                               pixel_acc=scores["pixel_acc"])
    with clock("logging"):
        if distances is not None:
            distances.log(tracker)
        if monitor is not None:
            monitor.finish()
        if tracker is not None:
            # A run resumed from its final checkpoint (a worker lost after the last
            # report) takes no step here: it has no first step to log.
            first = {} if first_step_unix is None else {"first_step_unix": first_step_unix}
            tracker.log({**clock.metrics(), **first}, step=step)
            if not tracker.flush():
                log.warning("MLflow still unreachable at the end: %d metric points not logged",
                            len(tracker.buffer))
    if console is not None:
        console.close()


def log_evaluation(tracker: MetricLogger, scores: dict, *, step: int, epoch: int,
                   model: torch.nn.Module, val_set, device: torch.device) -> None:
    """An evaluation in MLflow: val mIoU, pixel accuracy and per-class IoU by step, the
    per-class table of this epoch, and the sample images as image | truth | prediction."""
    tracker.log({"val_miou": scores["miou"], "val_pixel_acc": scores["pixel_acc"],
                 **per_class_metrics(val_set.classes, scores["per_class_iou"])}, step=step)
    tracker.log_artifact_text(per_class_table(val_set.classes, scores["per_class_iou"]),
                              f"per_class_iou/epoch_{epoch + 1:03d}.md")
    samples = sample_predictions(model, val_set, device)
    tracker.log_image(prediction_grid(*zip(*samples), val_set.palette),
                      key="val_predictions", step=step)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@torch.no_grad()
def sample_predictions(model: torch.nn.Module, dataset, device: torch.device,
                       count: int = SAMPLE_IMAGES) -> list[tuple]:
    """``(image uint8 (H, W, 3), truth (H, W), prediction (H, W))`` of the first ``count``
    images of ``dataset``: the same images at every evaluation, so their pictures show
    how the model's predictions change. ``model`` is the unwrapped module: only rank 0
    draws, and a DDP forward would wait for the other ranks."""
    model.eval()
    samples = []
    for index in range(min(count, len(dataset))):
        image, truth = dataset.load_pair(index)
        logits = model(to_model_input(image).unsqueeze(0).to(device))["out"]
        samples.append((image, truth, logits.argmax(dim=1)[0].cpu().numpy()))
    return samples


def per_class_metrics(class_names, per_class_iou) -> dict[str, float]:
    """``{"val_iou/sky": 0.61, ...}``: one metric per class, so MLflow plots each against
    steps; classes absent from prediction and truth (NaN IoU) are left out."""
    return {f"val_iou/{metric_key(name)}": iou for name, iou in zip(class_names, per_class_iou)
            if not math.isnan(iou)}


def per_class_table(class_names, per_class_iou) -> str:
    """A markdown table of per-class IoU (NaN: class absent from prediction and truth)."""
    return markdown_table(("class", "IoU"), [(name, f"{iou:.4f}")
                                              for name, iou in zip(class_names, per_class_iou)])
