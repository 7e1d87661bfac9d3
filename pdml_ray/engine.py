"""One process's training and evaluation, in plain PyTorch (no Ray, no MLflow).

The Ray service wraps exactly these functions; they also run on their own in one
process, which is how the unit tests and the single-process examples use them.

A step, as data (shapes for a local batch of B images of H x W pixels):
    image (B,3,H,W), point_labels (B,H,W) 255 except at points, mask (B,H,W) dense,
    image_index (B,) global dataset indices
    -> model: out (B,C,H,W), embed (B,D,h,w)
    -> points: embeddings (N,D) sampled at the points, labels (N,), image ids (N,)
    -> loss = CE(points [+ extended labels]) + pdml_weight * L_t(triplets of the miner)
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Callable, Iterable

import torch
from torch import nn

from pdml_ray.config import Config
from pdml_ray.extension import extend_from_logits, extension_accuracy
from pdml_ray.labels import IGNORE_INDEX
from pdml_ray.losses import point_cross_entropy, sample_point_embeddings, split_cross_entropy
from pdml_ray.metrics import ConfusionMatrix
from pdml_ray.mining import PointBatch, TripletMiner
from pdml_ray.models import DeepLab, build_model, parameter_groups


def build_model_for(cfg: Config, num_classes: int, *, pretrained: str | None = None) -> DeepLab:
    """The model ``cfg`` describes; the projection head exists only where PDML trains it
    (an unused head would leave DDP with parameters that never get a gradient)."""
    projection = cfg.model.embedding == "projection" and cfg.uses_pdml
    return build_model(num_classes=num_classes, backbone=cfg.model.backbone,
                       output_stride=cfg.model.output_stride, head=cfg.model.head,
                       pretrained=pretrained,
                       projection_dim=cfg.model.projection_dim if projection else 0,
                       projection_radius=cfg.model.projection_radius)


# -- optimisation ----------------------------------------------------------------------
def poly_lr(base_lr: float, step: int, total_steps: int, power: float) -> float:
    """The paper's schedule ``base_lr * (1 - step / total_steps) ** power``."""
    progress = min(step, total_steps) / max(total_steps, 1)
    return base_lr * (1.0 - progress) ** power


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (paper) or AdamW over the backbone (lr x1) and classifier (lr x head_lr_mult)."""
    groups = parameter_groups(model, lr=cfg.train.lr, head_lr_mult=cfg.train.head_lr_mult,
                              weight_decay=cfg.train.weight_decay)
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum,
                               weight_decay=cfg.train.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


# -- one step ---------------------------------------------------------------------------
def compute_loss(output: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], *,
                 cfg: Config, epoch: int, miner: TripletMiner | None, step: int = 0
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective of the configured supervision mode, and what to log.

    ``full`` trains on dense masks (the upper bound); the point modes train on the
    sparse point map, optionally extended online from this same forward pass
    (no second forward), plus the weighted PDML term over the original points, whose
    triplets ``miner`` forms at global step ``step``.
    """
    logits, embed = output["out"], output["embed"]
    point_labels = batch["point_labels"]
    logs: dict[str, float] = {}
    # An unset weight depends on model.pretrained; a no-op for the worker's resolved config.
    extension = cfg.extension.resolved(pretrained=cfg.model.pretrained is not None)
    extending = cfg.uses_extension and epoch >= extension.first_epoch(cfg.train.epochs)
    if cfg.train.supervision == "full":
        target = batch["mask"]
    else:
        target = point_labels
        if extending:
            with torch.no_grad():
                target = extend_from_logits(logits.detach(), point_labels,
                                            threshold=extension.threshold,
                                            window=extension.window,
                                            method=extension.method,
                                            boundary_margin=extension.boundary_margin)
                correct, total = extension_accuracy(target, point_labels, batch["mask"])
            logs["ext_pixels"] = float(total)
            logs["ext_correct"] = float(correct)
    if extending and extension.weighting != "pooled":
        ce = split_cross_entropy(logits.float(), target, point_labels,
                                 extended_weight=extension.weight_at(epoch, cfg.train.epochs),
                                 balanced=extension.weighting == "balanced")
    else:
        ce = point_cross_entropy(logits.float(), target)
    loss = ce
    logs["loss_ce"] = ce.item()
    if cfg.uses_pdml and miner is not None:
        embeddings, labels, batch_index = sample_point_embeddings(embed.float(), point_labels)
        points = PointBatch(embeddings, labels, batch["image_index"][batch_index], batch_index)
        terms = miner(points, step=step)
        loss = loss + cfg.loss.pdml_weight * terms.loss
        logs.update(loss_pdml=float(terms.loss.detach()), loss_pull=float(terms.pull),
                    loss_hinge=float(terms.hinge), dis_pos=float(terms.pos_dist),
                    dis_neg=float(terms.neg_dist), triplets=float(terms.num_triplets))
        logs.update(miner.stats)
    logs["loss"] = loss.item()
    return loss, logs


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in batch.items()}


LogFn = Callable[[int, dict[str, float]], None]


class _Averager:
    """Per-key means of the logged values since the last flush.

    NaN entries (e.g. dis(+) of a step without triplets) are skipped, not averaged in;
    extension pixels are pooled into one accuracy rather than a mean of ratios.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.steps = 0

    def add(self, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            if not math.isnan(value):
                self.sums[key] += value
                self.counts[key] += 1
        self.steps += 1

    def flush(self) -> dict[str, float]:
        out = {key: value / self.counts[key] for key, value in self.sums.items()
               if key not in ("ext_pixels", "ext_correct")}
        if self.sums.get("ext_pixels"):
            out["ext_accuracy"] = self.sums["ext_correct"] / self.sums["ext_pixels"]
            out["ext_pixels_per_step"] = self.sums["ext_pixels"] / self.steps
        self.sums.clear()
        self.counts.clear()
        self.steps = 0
        return out


def train_one_epoch(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]],
                    optimizer: torch.optim.Optimizer, *, cfg: Config, epoch: int,
                    start_step: int, total_steps: int, device: torch.device,
                    miner: TripletMiner | None = None, scaler: torch.amp.GradScaler | None = None,
                    on_log: LogFn | None = None) -> int:
    """Train over ``loader`` once (or until ``total_steps``); returns the next global step.

    The learning rate follows the poly schedule of the global step, so a run resumed
    from a checkpoint continues the same curve. ``on_log(step, means)`` receives the
    averaged loss terms every ``train.log_every_steps`` steps and at the epoch's end, so
    every step is in exactly one logged mean. Raises FloatingPointError
    on a non-finite loss rather than silently training a broken model.
    """
    model.train()
    step = start_step
    averager = _Averager()
    use_amp = scaler is not None
    tick, images_seen = time.perf_counter(), 0

    def log_means() -> None:
        nonlocal tick, images_seen
        elapsed = time.perf_counter() - tick
        means = averager.flush()
        means.update(lr=optimizer.param_groups[0]["lr"], epoch=float(epoch),
                     images_per_s=images_seen / max(elapsed, 1e-9))
        on_log(step, means)
        tick, images_seen = time.perf_counter(), 0

    for batch in loader:
        if step >= total_steps:
            break
        set_learning_rate(optimizer, poly_lr(cfg.train.lr, step, total_steps, cfg.train.poly_power))
        batch = _to_device(batch, device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            output = model(batch["image"])
        loss, logs = compute_loss(output, batch, cfg=cfg, epoch=epoch, miner=miner,
                                  step=step)
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(
                f"non-finite loss {logs['loss']} at step {step} (epoch {epoch}); terms: {logs}. "
                "Lower train.lr or loss.pdml_weight.")
        optimizer.zero_grad(set_to_none=True)
        if use_amp:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        step += 1
        images_seen += batch["image"].shape[0]
        averager.add(logs)
        if on_log is not None and (step % cfg.train.log_every_steps == 0 or step == total_steps):
            log_means()
    if on_log is not None and averager.steps:  # the epoch's tail since the last log
        log_means()
    return step


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], *, num_classes: int,
             device: torch.device) -> dict:
    """Dense-mask mIoU and pixel accuracy; reduced over processes when distributed."""
    model.eval()
    confusion = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    for batch in loader:
        batch = _to_device(batch, device)
        logits = model(batch["image"])["out"]
        confusion.update(logits.argmax(dim=1), batch["mask"])
    return confusion.compute()


def steps_per_epoch(num_images: int, global_batch: int) -> int:
    """Optimizer steps in one epoch with ``drop_last`` over the global batch."""
    return max(num_images // global_batch, 1)
