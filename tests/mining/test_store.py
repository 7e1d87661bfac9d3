"""The store miner: a local anchor with a positive and a negative from stored points, met
through the ``EmbeddingSampler`` protocol, here a fake held in memory (the Ray actor that
implements it in production is tested in tests/service/train/test_store.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdml_ray.config import LossConfig
from pdml_ray.mining import InBatchMiner, PointBatch, StoreMiner, build_miner


class FakeSampler:
    """An ``EmbeddingSampler`` held in memory: rows pushed with their step; a request for
    ``step`` draws (up to ``n``, in push order) the rows pushed at most ``max_staleness``
    steps before it, handed out by ``collect`` at that step only."""

    def __init__(self, rank: int = 0):
        self.rank = rank
        self.rows: list[tuple[np.ndarray, int, int, int]] = []  # embedding, label, image, step
        self.pending: dict | None = None
        self.requested_steps: list[int] = []
        self.restarts = self.failures = 0

    def push(self, embeddings, labels, image_ids, *, step: int) -> None:
        self.rows += [(e, int(c), int(i), step) for e, c, i in zip(embeddings, labels, image_ids)]

    def request(self, n: int, *, step: int, max_staleness: int) -> None:
        self.requested_steps.append(step)
        fresh = [row for row in self.rows if step - max_staleness <= row[3] <= step][:n]
        self.pending = {"embeddings": np.array([r[0] for r in fresh], dtype=np.float32),
                        "labels": np.array([r[1] for r in fresh], dtype=np.int64),
                        "image_ids": np.array([r[2] for r in fresh], dtype=np.int64)}

    def collect(self, step: int) -> dict | None:
        sample, self.pending = self.pending, None
        return sample if self.requested_steps and self.requested_steps[-1] == step else None


def store_loss_reference(anchor_emb, anchor_labels, anchor_images, keys, key_labels, key_images,
                         cfg: LossConfig) -> float:
    """Algorithm 1's rule for a local anchor set against the stored points, in floats:
    for each anchor and each stored image other than the anchor's, the t-th positive
    (same class, ascending row) pairs with the t-th negative."""
    losses = []
    for i in range(len(anchor_labels)):
        for m in sorted(set(key_images.tolist()) - {int(anchor_images[i])}):
            in_m = [j for j in range(len(key_labels)) if key_images[j] == m]
            pos = [j for j in in_m if key_labels[j] == anchor_labels[i]]
            neg = [j for j in in_m if key_labels[j] != anchor_labels[i]]
            for p, n in zip(pos, neg):
                d_pos = math.dist(anchor_emb[i].tolist(), keys[p].tolist())
                d_neg = math.dist(anchor_emb[i].tolist(), keys[n].tolist())
                losses.append(cfg.alpha * d_pos + cfg.beta * max(d_pos - d_neg + cfg.margin, 0))
    return sum(losses) / len(losses)


def local_points(seed: int, image_ids: list[int]) -> PointBatch:
    g = torch.Generator().manual_seed(seed)
    per_image = 4
    image_index = torch.arange(len(image_ids)).repeat_interleave(per_image)
    return PointBatch(embeddings=torch.randn(len(image_index), 3, generator=g).requires_grad_(),
                      labels=torch.randint(0, 3, (len(image_index),), generator=g),
                      image_ids=torch.tensor(image_ids).repeat_interleave(per_image),
                      batch_index=image_index)


def test_store_triplets_anchor_locally_and_add_their_weighted_loss():
    cfg = LossConfig(margin=2.0, alpha=0.8, beta=1.0, subgroup_size=2, store_weight=0.5,
                     store_samples=1000, store_max_staleness=10, mining="global+store")
    sampler = FakeSampler(rank=0)
    # Another worker's points of images 20-23 (one of them is also image 11 below).
    g = torch.Generator().manual_seed(7)
    other_emb = torch.randn(20, 3, generator=g)
    other_labels = torch.randint(0, 3, (20,), generator=g)
    other_images = torch.tensor([20, 21, 22, 11]).repeat_interleave(5)
    sampler.push(other_emb.numpy(), other_labels.numpy(), other_images.numpy(), step=0)

    miner = build_miner(cfg, store=sampler, start_step=1)
    assert isinstance(miner, StoreMiner) and miner.sampler.requested_steps == [1]
    sample = miner.sampler.pending  # what the miner will use: all 20 rows, as pushed
    assert (sample["image_ids"] == other_images.numpy()).all()
    points = local_points(0, image_ids=[10, 11])
    terms = miner(points, step=1)

    base = InBatchMiner(cfg)(points, step=1).loss
    reference = store_loss_reference(points.embeddings.detach(), points.labels, points.image_ids,
                                     torch.tensor(sample["embeddings"]),
                                     torch.tensor(sample["labels"]),
                                     torch.tensor(sample["image_ids"]), cfg)
    assert terms.loss.item() == pytest.approx(base.item() + cfg.store_weight * reference,
                                              rel=1e-5)
    assert miner.stats["store_hit"] == 1.0 and miner.stats["store_triplets"] > 0

    # The gradient reaches the local embeddings only (stored points are detached).
    terms.loss.backward()
    assert points.embeddings.grad is not None and points.embeddings.grad.abs().sum() > 0

    # This step's points were pushed stamped with the step, for the other workers' next
    # steps, and the sample of the next step is on its way.
    pushed = [row for row in sampler.rows if row[3] == 1]
    assert sorted(row[2] for row in pushed) == points.image_ids.tolist()
    assert miner.sampler.requested_steps == [1, 2]


def test_the_store_miner_works_at_the_callers_step():
    """Pushes are stamped with, and samples requested for, the step the caller gives (a
    resumed run's global step), not a count of the miner's own calls."""
    cfg = LossConfig(margin=2.0, subgroup_size=2, store_samples=1000, store_max_staleness=1)
    client = FakeSampler(rank=1)
    miner = StoreMiner(InBatchMiner(cfg), client, cfg)
    miner.prefetch(40)
    miner(local_points(2, image_ids=[0, 1]), step=40)
    miner(local_points(3, image_ids=[2, 3]), step=41)
    assert client.requested_steps == [40, 41, 42]
    assert sorted(row[3] for row in client.rows) == [40] * 8 + [41] * 8
    # Step 41 drew the sample requested at step 40 for step 41: step 40's points, whose
    # images 0 and 1 differ from the anchors' 2 and 3.
    assert miner.stats["store_hit"] == 1.0


def test_without_store_sample_the_loss_is_the_base_miners():
    cfg = LossConfig(margin=2.0, subgroup_size=2)
    miner = StoreMiner(InBatchMiner(cfg), FakeSampler(), cfg)  # nothing requested: no sample
    points = local_points(1, image_ids=[0, 1])
    assert miner(points, step=0).loss.item() == pytest.approx(
        InBatchMiner(cfg)(points, step=0).loss.item())
    assert miner.stats["store_hit"] == 0.0
