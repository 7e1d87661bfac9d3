"""Store triplets: a local anchor with a positive and a negative from an embedding store.

The store holds detached point embeddings that other workers (and this one) pushed at
earlier steps, so triplets reach beyond the subgroups of one global batch. The miner
meets the store through :class:`EmbeddingSampler`; ``pdml_ray.service.train.store`` implements
it on a Ray actor.
"""

from __future__ import annotations

import time
from typing import Mapping, Protocol

import numpy as np
import torch

from pdml_ray.config import LossConfig
from pdml_ray.losses import PDMLTerms, mine_triplets_between, triplet_terms
from pdml_ray.mining.base import PointBatch, TripletMiner


class EmbeddingSampler(Protocol):
    """Where the store miner keeps its points and draws stored ones.

    Sampling comes in two halves so that an implementation answering from another
    process can overlap the round trip with the next forward pass: ``request`` asks for
    up to ``n`` rows pushed at most ``max_staleness`` steps before ``step``, and
    ``collect(step)`` returns that sample at the step it was requested for, or None
    when nothing was requested or the store could not answer. A sample maps
    ``"embeddings"`` to ``(K, D)`` float32 and ``"labels"``, ``"image_ids"`` to ``(K,)``
    integers. ``restarts`` counts the times the store came back empty, ``failures`` the
    calls it could not answer.
    """

    restarts: int
    failures: int

    def push(self, embeddings: np.ndarray, labels: np.ndarray, image_ids: np.ndarray, *,
             step: int) -> None: ...

    def request(self, n: int, *, step: int, max_staleness: int) -> None: ...

    def collect(self, step: int) -> Mapping[str, np.ndarray] | None: ...


class StoreMiner:
    """Adds store triplets (local anchor, stored positive and negative) to a base miner.

    At step s it uses the sample requested for s, pushes the batch's points stamped s and
    requests the sample of step s + 1. The step is the caller's (the engine's global
    step), so pushes and requests of a resumed run carry the steps the run is at.
    """

    def __init__(self, base: TripletMiner, sampler: EmbeddingSampler, loss_cfg: LossConfig):
        self.base, self.sampler, self.cfg = base, sampler, loss_cfg
        self.stats: dict[str, float] = {}

    def prefetch(self, step: int) -> None:
        """Request the sample that the call at ``step`` will use."""
        self.sampler.request(self.cfg.store_samples, step=step,
                             max_staleness=self.cfg.store_max_staleness)

    def __call__(self, points: PointBatch, *, step: int) -> PDMLTerms:
        cfg = self.cfg
        terms = self.base(points, step=step)
        stats = dict(self.base.stats)
        tick = time.perf_counter()
        sample = self.sampler.collect(step)
        store_triplets = 0
        loss = terms.loss
        if sample is not None and len(sample["labels"]):
            device = points.embeddings.device
            # Copies: a sample may be a read-only view (Ray's object store hands those out).
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
        self.sampler.push(points.embeddings.detach().cpu().numpy().astype(np.float32),
                          points.labels.cpu().numpy(), points.image_ids.cpu().numpy(), step=step)
        self.prefetch(step + 1)
        stats.update(store_triplets=float(store_triplets), store_hit=float(store_triplets > 0),
                     store_latency_ms=(time.perf_counter() - tick) * 1e3,
                     store_restarts=float(self.sampler.restarts),
                     store_failures=float(self.sampler.failures))
        self.stats = stats
        return terms._replace(loss=loss)
