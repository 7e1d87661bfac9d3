"""The EmbeddingStore's ring buffer and the store triplets a worker adds to its loss.

The actor's class is exercised as a plain object (Ray only moves its calls between
processes; the end-to-end and fault tests run it as a real actor). The miner meets it
through an ``EmbeddingSampler`` like ``StoreClient`` that calls it in-process.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdml_ray.config import LossConfig
from pdml_ray.mining import InBatchMiner, PointBatch, StoreMiner, build_miner
from pdml_ray.service.store import EmbeddingStore


def rows(n: int, dim: int = 3, start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n points whose embedding, label and image id all encode their running number."""
    ids = np.arange(start, start + n)
    return np.repeat(ids[:, None], dim, 1).astype(np.float32), ids % 5, ids


def test_ring_buffer_keeps_the_newest_rows_within_capacity():
    store = EmbeddingStore(capacity=10, seed=0)
    for batch in range(4):  # 4 pushes of 4 points: 16 > 10
        store.push(*rows(4, start=4 * batch), rank=batch % 2, step=batch)
    assert store.stats()["size"] == 10 and store.stats()["pushes"] == 4
    sample = store.sample(100, step=3, max_staleness=100)
    assert sorted(sample["image_ids"].tolist()) == list(range(6, 16))  # the newest 10
    for key in ("labels", "ranks", "steps"):
        assert len(sample[key]) == 10
    order = np.argsort(sample["image_ids"])
    assert (sample["embeddings"][order, 0] == np.arange(6, 16)).all()
    assert (sample["labels"][order] == np.arange(6, 16) % 5).all()
    assert (sample["steps"][order] == np.arange(6, 16) // 4).all()  # pushed at step id // 4
    assert (sample["ranks"][order] == (np.arange(6, 16) // 4) % 2).all()


def test_a_push_larger_than_the_store_keeps_its_tail():
    store = EmbeddingStore(capacity=4)
    store.push(*rows(9), rank=0, step=0)
    assert sorted(store.sample(10, step=0, max_staleness=1)["image_ids"].tolist()) == [5, 6, 7, 8]


def test_sample_draws_only_fresh_rows_without_repeats():
    store = EmbeddingStore(capacity=64, seed=1)
    for step in range(6):
        store.push(*rows(8, start=8 * step), rank=0, step=step)
    fresh = store.sample(100, step=6, max_staleness=2)  # steps 4 and 5 only
    assert sorted(fresh["image_ids"].tolist()) == list(range(32, 48))
    few = store.sample(5, step=6, max_staleness=2)
    assert len(few["image_ids"]) == 5 and len(set(few["image_ids"].tolist())) == 5
    assert set(few["steps"].tolist()) <= {4, 5}
    assert len(store.sample(5, step=100, max_staleness=2)["labels"]) == 0  # all stale


def test_empty_store_answers_with_empty_arrays():
    sample = EmbeddingStore(capacity=4).sample(8, step=0, max_staleness=5)
    assert sample["embeddings"].shape[0] == 0 and len(sample["labels"]) == 0
    assert isinstance(sample["incarnation"], str)


class InProcessClient:
    """StoreClient's interface, calling an EmbeddingStore directly; it remembers the step
    each sample was requested for, and hands a sample out only at that step."""

    def __init__(self, store: EmbeddingStore, rank: int):
        self.store, self.rank = store, rank
        self.pending: dict | None = None
        self.requested_steps: list[int] = []
        self.restarts = self.failures = 0

    def request(self, n: int, *, step: int, max_staleness: int) -> None:
        self.requested_steps.append(step)
        self.pending = self.store.sample(n, step=step, max_staleness=max_staleness)

    def collect(self, step: int) -> dict | None:
        sample, self.pending = self.pending, None
        return sample if self.requested_steps and self.requested_steps[-1] == step else None

    def push(self, embeddings, labels, image_ids, *, step: int) -> None:
        self.store.push(embeddings, labels, image_ids, self.rank, step)


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
    store = EmbeddingStore(capacity=1000)
    # Another worker's points of images 20-23 (one of them is also image 11 below).
    g = torch.Generator().manual_seed(7)
    other_emb = torch.randn(20, 3, generator=g)
    other_labels = torch.randint(0, 3, (20,), generator=g)
    other_images = torch.tensor([20, 21, 22, 11]).repeat_interleave(5)
    store.push(other_emb.numpy(), other_labels.numpy(), other_images.numpy(), rank=1, step=0)

    miner = build_miner(cfg, store=InProcessClient(store, rank=0), start_step=1)
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

    # This step's points were pushed with rank and step, for the other workers' next steps,
    # and the sample of the next step is on its way.
    pushed = store.sample(1000, step=1, max_staleness=0)  # rows pushed at step >= 1
    assert sorted(pushed["image_ids"].tolist()) == points.image_ids.tolist()
    assert set(pushed["ranks"].tolist()) == {0} and set(pushed["steps"].tolist()) == {1}
    assert miner.sampler.requested_steps == [1, 2]


def test_the_store_miner_works_at_the_callers_step():
    """Pushes are stamped with, and samples requested for, the step the caller gives (a
    resumed run's global step), not a count of the miner's own calls."""
    cfg = LossConfig(margin=2.0, subgroup_size=2, store_samples=1000, store_max_staleness=1)
    store = EmbeddingStore(capacity=1000)
    client = InProcessClient(store, rank=1)
    miner = StoreMiner(InBatchMiner(cfg), client, cfg)
    miner.prefetch(40)
    miner(local_points(2, image_ids=[0, 1]), step=40)
    miner(local_points(3, image_ids=[2, 3]), step=41)
    assert client.requested_steps == [40, 41, 42]
    steps = store.sample(1000, step=41, max_staleness=1)["steps"]
    assert sorted(steps.tolist()) == [40] * 8 + [41] * 8
    # Step 41 drew the sample requested at step 40 for step 41: step 40's points, whose
    # images 0 and 1 differ from the anchors' 2 and 3.
    assert miner.stats["store_hit"] == 1.0


def test_without_store_sample_the_loss_is_the_base_miners():
    cfg = LossConfig(margin=2.0, subgroup_size=2)
    miner = StoreMiner(InBatchMiner(cfg), InProcessClient(EmbeddingStore(capacity=8), rank=0),
                       cfg)  # nothing requested yet: no sample this step
    points = local_points(1, image_ids=[0, 1])
    assert miner(points, step=0).loss.item() == pytest.approx(
        InBatchMiner(cfg)(points, step=0).loss.item())
    assert miner.stats["store_hit"] == 0.0


@pytest.mark.parametrize("workers", [1, 2, 3, 8, 64])
def test_shards_split_the_workers_into_even_groups(workers):
    from pdml_ray.service.store import shard_of, store_actor_name

    for shards in range(1, workers + 1):
        groups = [[rank for rank in range(workers) if shard_of(rank, shards) == shard]
                  for shard in range(shards)]
        assert sorted(rank for group in groups for rank in group) == list(range(workers))
        assert max(map(len, groups)) - min(map(len, groups)) <= 1  # none empty, none double
    names = {store_actor_name("run", shard) for shard in range(4)}
    assert len(names) == 4 and store_actor_name("run") == store_actor_name("run", 0)
