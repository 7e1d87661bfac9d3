"""Training diagnostics that rank 0 logs into the run: the dis(+)/dis(-) histograms of
the first and the last epoch (the paper's Figure 4).

:class:`DistanceRecorder` wraps the step's triplet miner in a
:class:`~pdml_ray.mining.RecordingMiner` for the epochs it records, which measures every
in-batch triplet of this worker's batch from the embeddings the step already sampled and
leaves the loss untouched.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from pdml_ray.config import Config
from pdml_ray.mining import RecordingMiner, TripletMiner
from pdml_ray.reports import plot_distance_histograms, save_figure

log = logging.getLogger(__name__)

ARTIFACT_DIR = "diagnostics"


class Reservoir:
    """A uniform sample of at most ``capacity`` rows ``(K,)`` out of all rows offered
    (reservoir sampling, vectorised per batch), so a long epoch costs bounded memory."""

    def __init__(self, capacity: int, width: int, *, seed: int = 0):
        self.capacity = capacity
        self.rows = np.empty((0, width), dtype=np.float32)
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32)
        free = self.capacity - len(self.rows)
        if free > 0:
            self.rows = np.concatenate([self.rows, rows[:free]])
            self.seen += len(rows[:free])
            rows = rows[free:]
        if len(rows):
            # Row i of this batch is the (seen + i + 1)-th offered: it replaces a random
            # slot with probability capacity / (seen + i + 1).
            slots = self.rng.integers(0, self.seen + np.arange(1, len(rows) + 1))
            keep = slots < self.capacity
            self.rows[slots[keep]] = rows[keep]
            self.seen += len(rows)


class DistanceRecorder:
    """Per-triplet dis(+) and dis(-) over the first and the last epoch of a run.

    Use on rank 0 of a PDML run: ``miner = recorder.watch(miner, epoch)`` before each
    epoch, ``recorder.log(tracker)`` after the loop. An epoch that this attempt does not
    run (a resumed run starts later) is simply absent from the plot.
    """

    def __init__(self, cfg: Config, *, last_epoch: int, capacity: int = 200_000):
        self.cfg = cfg
        self.epochs = sorted({0, last_epoch})
        self.samples: dict[int, Reservoir] = {}
        self.capacity = capacity

    @classmethod
    def for_run(cls, cfg: Config, *, total_steps: int, steps_per_epoch: int) -> DistanceRecorder:
        """The recorder of a run that stops after ``total_steps`` (``train.max_steps``
        may end it before ``train.epochs``)."""
        epochs_run = min(cfg.train.epochs, math.ceil(total_steps / max(steps_per_epoch, 1)))
        return cls(cfg, last_epoch=max(epochs_run - 1, 0))

    def watch(self, miner: TripletMiner, epoch: int) -> TripletMiner:
        """``miner`` itself, or a recording wrapper of it when ``epoch`` is recorded."""
        if epoch not in self.epochs:
            return miner
        sample = self.samples.setdefault(epoch, Reservoir(self.capacity, 2, seed=epoch))

        def record(pos: torch.Tensor, neg: torch.Tensor) -> None:
            sample.add(np.stack([pos.cpu().numpy(), neg.cpu().numpy()], axis=1))

        return RecordingMiner(miner, record, subgroup_size=self.cfg.loss.subgroup_size,
                              pairing=self.cfg.loss.pairing)

    def distances(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{"epoch k": (dis(+) (T,), dis(-) (T,))}`` of the recorded epochs (1-based)."""
        return {f"epoch {epoch + 1}": (sample.rows[:, 0], sample.rows[:, 1])
                for epoch, sample in sorted(self.samples.items())}

    def write(self, folder: str | Path) -> list[Path]:
        """``distance_histograms.png`` and ``triplet_distances.npz`` (arrays ``pos_epoch_k``,
        ``neg_epoch_k``) in ``folder``; nothing when no triplet was seen."""
        series = {label: pair for label, pair in self.distances().items() if pair[0].size}
        if not series:
            return []
        folder = Path(folder)
        arrays = {}
        for label, (pos, neg) in series.items():
            key = label.replace(" ", "_")
            arrays[f"pos_{key}"], arrays[f"neg_{key}"] = pos, neg
        np.savez_compressed(folder / "triplet_distances.npz", **arrays)
        cfg = self.cfg.loss
        figure = plot_distance_histograms(
            series, title=f"dis(+) and dis(-) of in-batch triplets (margin {cfg.margin:g}, "
                          f"alpha {cfg.alpha:g}, beta {cfg.beta:g})")
        return [save_figure(figure, folder / "distance_histograms.png"),
                folder / "triplet_distances.npz"]

    def log(self, tracker) -> None:
        """Log the files into the run of ``tracker`` (a ``MetricLogger``); a failure to
        draw or log costs the plot, never the training run."""
        try:
            with tempfile.TemporaryDirectory() as folder:
                for path in self.write(folder):
                    tracker.log_artifact(str(path), ARTIFACT_DIR)
        except Exception as exc:
            log.warning("could not log the distance histograms to MLflow: %s", exc)
