"""Global subgroups: subgroups of consecutive images of the *global* batch.

They are formed after a differentiable all_gather, so a subgroup spans images held by
different workers (positions interleave ranks: see :func:`gather_points`).

Gradient scaling: the loss is L = (1/T) sum over all T triplets of the global batch.
Each worker computes the part of that sum whose anchors it holds. The gather's backward
sums gradients over workers, so a worker's embeddings receive the gradient of the whole
L; DDP then *averages* parameter gradients over the W workers, so each worker's part is
multiplied by W to make the averaged gradient equal the single-process gradient of L on
the same global batch (tests/mining/test_global_subgroups.py).
"""

from __future__ import annotations

import torch.distributed as dist

from pdml_ray.config import LossConfig
from pdml_ray.losses import PDMLTerms, mine_triplets, mined_triplet_terms
from pdml_ray.mining.base import PointBatch
from pdml_ray.mining.gather import gather_points
from pdml_ray.mining.in_batch import InBatchMiner


class GlobalSubgroupMiner:
    """Subgroups over the global batch; this worker scores the triplets it anchors.

    Without an initialised process group of two or more processes it mines in-batch.
    """

    def __init__(self, loss_cfg: LossConfig):
        self.cfg = loss_cfg
        self.in_batch = InBatchMiner(loss_cfg)
        self.stats: dict[str, float] = {}

    def __call__(self, points: PointBatch, *, step: int) -> PDMLTerms:
        cfg = self.cfg
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.in_batch(points, step=step)
        world = dist.get_world_size()
        gathered = gather_points(points.embeddings, points.labels, points.image_ids,
                                 points.batch_index)
        subgroups = gathered.global_position // cfg.subgroup_size
        triplets = mine_triplets(gathered.labels, gathered.image_ids, subgroups,
                                 pairing=cfg.pairing)
        anchors = triplets[:, 0]
        mine = triplets[(anchors >= gathered.local.start) & (anchors < gathered.local.stop)]
        emb = gathered.embeddings
        terms = mined_triplet_terms(emb, mine, subgroups, margin=cfg.margin, alpha=cfg.alpha,
                                    beta=cfg.beta)
        share = world * mine.shape[0] / max(triplets.shape[0], 1)
        # A worker with no anchored triplet still joins the gather's backward.
        loss = terms.loss * share + emb.sum() * 0
        self.stats = {"triplets_global": float(triplets.shape[0])}
        return terms._replace(loss=loss)
