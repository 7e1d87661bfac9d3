"""A miner wrapper that also measures the distances of the batch's in-batch triplets."""

from __future__ import annotations

from typing import Callable

import torch

from pdml_ray.losses import PDMLTerms, triplet_distances
from pdml_ray.mining.base import PointBatch, TripletMiner

DistanceSink = Callable[[torch.Tensor, torch.Tensor], None]


class RecordingMiner:
    """``miner``, plus ``record(dis_pos (T,), dis_neg (T,))`` of every in-batch triplet.

    The distances come from the embeddings the step already sampled (detached: no extra
    forward pass, no gradient); ``record`` is not called for a batch without triplets.
    The loss is untouched: the wrapped miner is called exactly as before, so every worker
    still joins the same collectives.
    """

    def __init__(self, miner: TripletMiner, record: DistanceSink, *, subgroup_size: int,
                 pairing: str):
        self.miner, self.record = miner, record
        self.subgroup_size, self.pairing = subgroup_size, pairing
        self.stats: dict[str, float] = miner.stats

    def __call__(self, points: PointBatch, *, step: int) -> PDMLTerms:
        pos, neg = triplet_distances(points.embeddings.detach(), points.labels, points.image_ids,
                                     points.batch_index // self.subgroup_size,
                                     pairing=self.pairing)
        if pos.numel():
            self.record(pos, neg)
        terms = self.miner(points, step=step)
        self.stats = self.miner.stats
        return terms
