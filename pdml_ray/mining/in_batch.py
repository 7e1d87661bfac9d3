"""In-batch mining: triplets among the images of one process's batch."""

from __future__ import annotations

from pdml_ray.config import LossConfig
from pdml_ray.losses import PDMLTerms, pdml_terms
from pdml_ray.mining.base import PointBatch


class InBatchMiner:
    """Triplets among the images of this process's batch, in subgroups of consecutive images."""

    def __init__(self, loss_cfg: LossConfig):
        self.loss_cfg = loss_cfg
        self.stats: dict[str, float] = {}

    def __call__(self, points: PointBatch, *, step: int) -> PDMLTerms:
        cfg = self.loss_cfg
        return pdml_terms(points.embeddings, points.labels, points.image_ids,
                          points.batch_index // cfg.subgroup_size, margin=cfg.margin,
                          alpha=cfg.alpha, beta=cfg.beta, pairing=cfg.pairing)
