"""Cross-worker triplet mining scopes plugged into the engine's training step.

- ``in_batch``: the engine's :class:`InBatchMiner` (subgroups of one worker's batch).
- ``global``: subgroups of consecutive images of the *global* batch, formed after a
  differentiable all_gather, so a subgroup spans images held by different workers
  (positions interleave ranks: see :func:`gather_points`).
- ``global+store``: the above plus triplets whose anchor is a local point and whose
  positive and negative come from the EmbeddingStore (other workers, earlier steps).

Gradient scaling of ``global``: the loss is L = (1/T) sum over all T triplets of the
global batch. Each worker computes the part of that sum whose anchors it holds. The
gather's backward sums gradients over workers, so a worker's embeddings receive the
gradient of the whole L; DDP then *averages* parameter gradients over the W workers,
so each worker's part is multiplied by W to make the averaged gradient equal the
single-process gradient of L on the same global batch (tests/service/test_gather.py).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.distributed as dist

from pdml_ray.config import LossConfig
from pdml_ray.engine import InBatchMiner, PointBatch, TripletMiner
from pdml_ray.losses import (PDMLTerms, mine_triplets, mine_triplets_between,
                             mined_triplet_terms, triplet_terms)
from pdml_ray.service.gather import gather_points
from pdml_ray.service.store import StoreClient


def _with_loss(terms: PDMLTerms, loss: torch.Tensor) -> PDMLTerms:
    return terms._replace(loss=loss) if hasattr(terms, "_replace") else dataclasses.replace(terms, loss=loss)


class GlobalSubgroupMiner:
    """Subgroups over the global batch; this worker scores the triplets it anchors."""

    def __init__(self, loss_cfg: LossConfig):
        self.cfg = loss_cfg
        self.stats: dict[str, float] = {}

    def __call__(self, points: PointBatch) -> PDMLTerms:
        cfg = self.cfg
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return InBatchMiner(cfg)(points)
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
        return _with_loss(terms, loss)


class StoreMiner:
    """Adds store triplets (local anchor, stored positive and negative) to a base miner."""

    def __init__(self, base: TripletMiner, client: StoreClient, loss_cfg: LossConfig, *,
                 start_step: int):
        self.base, self.client, self.cfg = base, client, loss_cfg
        self.step = start_step
        self.stats: dict[str, float] = {}

    def __call__(self, points: PointBatch) -> PDMLTerms:
        cfg = self.cfg
        terms = self.base(points)
        stats = dict(getattr(self.base, "stats", {}))
        tick = time.perf_counter()
        sample = self.client.collect(self.step)
        store_triplets = 0
        loss = terms.loss
        if sample is not None and len(sample["labels"]):
            device = points.embeddings.device
            # Copies: Ray hands out read-only views of its object store.
            keys, key_labels, key_images = (torch.tensor(sample[key], device=device) for key in
                                            ("embeddings", "labels", "image_ids"))
            triplets = mine_triplets_between(points.labels, points.image_ids, key_labels,
                                             key_images, pairing=cfg.pairing)
            store_triplets = triplets.shape[0]
            if store_triplets:
                store_terms = triplet_terms(points.embeddings[triplets[:, 0]], keys[triplets[:, 1]],
                                            keys[triplets[:, 2]], margin=cfg.margin,
                                            alpha=cfg.alpha, beta=cfg.beta)
                loss = loss + cfg.store_weight * store_terms.loss
        self.client.push(points.embeddings.detach().cpu().numpy().astype(np.float32),
                         points.labels.cpu().numpy(), points.image_ids.cpu().numpy(),
                         step=self.step)
        self.step += 1
        self.client.request(cfg.store_samples, step=self.step, max_staleness=cfg.store_max_staleness)
        stats.update(store_triplets=float(store_triplets), store_hit=float(store_triplets > 0),
                     store_latency_ms=(time.perf_counter() - tick) * 1e3,
                     store_restarts=float(self.client.restarts),
                     store_failures=float(self.client.failures))
        self.stats = stats
        return _with_loss(terms, loss)


def build_miner(loss_cfg: LossConfig, *, store: StoreClient | None,
                start_step: int) -> TripletMiner:
    if loss_cfg.mining == "in_batch":
        return InBatchMiner(loss_cfg)
    miner: TripletMiner = GlobalSubgroupMiner(loss_cfg)
    if loss_cfg.mining == "global+store" and store is not None:
        store.request(loss_cfg.store_samples, step=start_step, max_staleness=loss_cfg.store_max_staleness)
        miner = StoreMiner(miner, store, loss_cfg, start_step=start_step)
    return miner
