"""Training diagnostics that rank 0 logs into the run: the dis(+)/dis(-) histograms of
the first and the last epoch (the paper's Figure 4).

:class:`DistanceRecorder` wraps the step's triplet miner for the epochs it records and,
from the same point embeddings the step already sampled (no extra forward pass), measures
every in-batch triplet of this worker's batch with
:func:`~pdml_ray.losses.triplet_distances`. The loss itself is untouched: the wrapped
miner is called exactly as before, so every worker still joins the same collectives.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np

from pdml_ray.config import Config
from pdml_ray.engine import PointBatch, TripletMiner
from pdml_ray.losses import PDMLTerms, triplet_distances
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


class _RecordingMiner:
    """The step's miner, plus a look at the distances of the batch's in-batch triplets."""

    def __init__(self, miner: TripletMiner, recorder: DistanceRecorder, sample: Reservoir):
        self.miner, self.recorder, self.sample = miner, recorder, sample

    @property
    def stats(self) -> dict[str, float]:
        return getattr(self.miner, "stats", {})

    def __call__(self, points: PointBatch) -> PDMLTerms:
        loss_cfg = self.recorder.cfg.loss
        pos, neg = triplet_distances(points.embeddings.detach(), points.labels, points.image_ids,
                                     points.batch_index // loss_cfg.subgroup_size,
                                     pairing=loss_cfg.pairing)
        if pos.numel():
            self.sample.add(np.stack([pos.cpu().numpy(), neg.cpu().numpy()], axis=1))
        return self.miner(points)


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
        return _RecordingMiner(miner, self, sample)

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
        """Log the files into the run of ``tracker`` (a ``MetricLogger``); a tracking
        failure costs the plot, never the training run."""
        try:
            with tempfile.TemporaryDirectory() as folder:
                for path in self.write(folder):
                    tracker.client.log_artifact(tracker.run_id, str(path), ARTIFACT_DIR)
        except Exception as exc:
            log.warning("could not log the distance histograms to MLflow: %s", exc)
