"""The EmbeddingStore's ring buffer and its shards.

The actor's class is exercised as a plain object (Ray only moves its calls between
processes; the end-to-end and fault tests run it as a real actor). The store miner that
uses it is tested in tests/mining/test_store.py, against a fake sampler.
"""

from __future__ import annotations

import numpy as np
import pytest
from pdml_ray.service.train.store import EmbeddingStore


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


@pytest.mark.parametrize("workers", [1, 2, 3, 8, 64])
def test_shards_split_the_workers_into_even_groups(workers):
    from pdml_ray.service.train.store import shard_of, store_actor_name

    for shards in range(1, workers + 1):
        groups = [[rank for rank in range(workers) if shard_of(rank, shards) == shard]
                  for shard in range(shards)]
        assert sorted(rank for group in groups for rank in group) == list(range(workers))
        assert max(map(len, groups)) - min(map(len, groups)) <= 1  # none empty, none double
    names = {store_actor_name("run", shard) for shard in range(4)}
    assert len(names) == 4 and store_actor_name("run") == store_actor_name("run", 0)
