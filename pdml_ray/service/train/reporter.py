"""What a worker tells the outside while it trains: MLflow metrics, system metrics and
PDML's distance histograms (rank 0), the console's progress (when a job's terminal
watches), and where the worker's time goes. One object owns them, so the training loop
calls it without asking which of them this worker has."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from pdml_ray.config import Config
from pdml_ray.data.transforms import to_model_input
from pdml_ray.mining import TripletMiner
from pdml_ray.reports import markdown_table, prediction_grid
from pdml_ray.service.tracking import MetricLogger, metric_key, start_system_metrics
from pdml_ray.service.train.diagnostics import DistanceRecorder
from pdml_ray.service.train.phases import PhaseClock
from pdml_ray.service.train.progress import WorkerProgress

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 4  # validation images drawn as image | truth | prediction at each evaluation


@dataclass(frozen=True)
class WorkerSpec:
    """What the driver hands every worker of a run (Ray pickles it to each)."""

    config: dict  # the run's Config.to_dict(), as stored with its checkpoints
    run_id: str  # the MLflow run rank 0 logs into
    tracking_uri: str
    store_run: str | None = None  # the EmbeddingStore actors' run name; None: no store
    progress_board: str | None = None  # a job's console board actor; None: no console
    forward_warnings: bool = False  # also post the workers' warnings to the console
    # MLflow's own setting (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL), read on the driver
    # so that every node honours it, not just the one where it was set
    system_metrics_every_s: float = 10.0


class Reporter:
    """A worker's reporting: ``clock`` everywhere; the MLflow logger, system metrics and
    distance histograms on rank 0 only; the console where a job's terminal watches."""

    def __init__(self, spec: WorkerSpec, cfg: Config, *, rank: int, world: int,
                 total_steps: int, steps_per_epoch: int, last_epoch: int):
        self.rank, self.world, self.total_steps, self.last_epoch = rank, world, total_steps, last_epoch
        self.clock = PhaseClock()  # where this worker's time goes, logged as time/<phase>_s
        self.first_step_unix: float | None = None  # the driver measures start-up from it
        self.losses: list[float] = []  # this epoch's logged losses
        self.started = time.monotonic()
        self.tracker = MetricLogger(spec.tracking_uri, spec.run_id) if rank == 0 else None
        self.monitor = (start_system_metrics(spec.tracking_uri, spec.run_id,
                                             every_s=spec.system_metrics_every_s)
                        if rank == 0 else None)
        self.console = (WorkerProgress(spec.progress_board, rank=rank,
                                       forward_warnings=spec.forward_warnings)
                        if spec.progress_board else None)
        self.distances = (DistanceRecorder.for_run(cfg, total_steps=total_steps,
                                                   steps_per_epoch=steps_per_epoch)
                          if rank == 0 and cfg.uses_pdml else None)  # the paper's Figure 4

    # -- an epoch's steps -----------------------------------------------------------------
    def epoch_started(self, loader: Iterable, *, epoch: int, step: int,
                      steps_per_epoch: int) -> Iterable:
        """The epoch's batches, counted on the console when there is one."""
        self.started, self.losses = time.monotonic(), []
        self.first_step_unix = self.first_step_unix or time.time()
        if self.console is None:
            return loader
        return self.console.batches(loader, epoch=epoch + 1, epochs=self.last_epoch,
                                    total=min(steps_per_epoch, self.total_steps - step))

    def watch(self, miner: TripletMiner, epoch: int) -> TripletMiner:
        """``miner``, its triplets' distances recorded on rank 0 of a PDML run."""
        return self.distances.watch(miner, epoch) if self.distances else miner

    def on_log(self, at_step: int, means: dict) -> None:
        """The engine's means of the last logged steps: into MLflow (rank 0)."""
        self.losses.append(means["loss"])
        if self.console is not None:
            self.console.loss = means["loss"]
        if self.tracker is not None:
            means["images_per_s"] = means["images_per_s"] * self.world
            with self.clock("logging"):
                self.tracker.log(means, step=at_step)
            log.debug("step %d/%d  loss %.4f  lr %.2e  %.1f img/s", at_step, self.total_steps,
                      means["loss"], means["lr"], means["images_per_s"])

    # -- an evaluation -----------------------------------------------------------------
    def evaluation(self, scores: dict, *, step: int, epoch: int, model: torch.nn.Module,
                   val_set, device: torch.device) -> dict:
        """Log an evaluation (rank 0) and return the metrics ``ray.train.report`` takes."""
        metrics = {"val_miou": scores["miou"], "val_pixel_acc": scores["pixel_acc"],
                   "epoch": epoch + 1, "step": step, "first_step_unix": self.first_step_unix,
                   **self.clock.metrics()}  # the driver's end-of-run summary reads these
        if self.tracker is not None:
            with self.clock("logging"):
                log_evaluation(self.tracker, scores, step=step, epoch=epoch, model=model,
                               val_set=val_set, device=device)
        return metrics

    def epoch_done(self, epoch: int, scores: dict | None = None) -> None:
        if self.console is None:
            return
        extra = {} if scores is None else {"val_miou": scores["miou"],
                                           "pixel_acc": scores["pixel_acc"]}
        self.console.epoch_done(epoch + 1, self.last_epoch, time.monotonic() - self.started,
                                loss=sum(self.losses) / len(self.losses) if self.losses else None,
                                **extra)

    # -- the end -------------------------------------------------------------------------
    def finish(self, step: int) -> None:
        with self.clock("logging"):
            if self.distances is not None:
                self.distances.log(self.tracker)
            if self.monitor is not None:
                self.monitor.finish()
            if self.tracker is not None:
                # A run resumed from its final checkpoint (a worker lost after the last
                # report) takes no step here: it has no first step to log.
                first = ({} if self.first_step_unix is None
                         else {"first_step_unix": self.first_step_unix})
                self.tracker.log({**self.clock.metrics(), **first}, step=step)
                if not self.tracker.flush():
                    log.warning("MLflow still unreachable at the end: %d metric points not "
                                "logged", len(self.tracker.buffer))
        if self.console is not None:
            self.console.close()


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


@torch.no_grad()
def sample_predictions(model: torch.nn.Module, dataset, device: torch.device,
                       count: int = SAMPLE_IMAGES) -> list[tuple[Any, ...]]:
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
