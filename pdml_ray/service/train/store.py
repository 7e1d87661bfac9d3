"""The EmbeddingStore: a Ray actor holding recent point embeddings from every worker.

It lets a worker form triplets whose positive and negative come from images held by
other workers and earlier steps, beyond the subgroups of one global batch. It lives in
memory only: if it dies, Ray restarts it empty and training mines in-batch meanwhile.
"""

from __future__ import annotations

import logging
import uuid

import numpy as np
import ray

log = logging.getLogger(__name__)

STORE_NAMESPACE = "pdml_ray"


class EmbeddingStore:
    """A bounded ring buffer of detached point embeddings with their provenance.

    Rows: embedding (D,) float32, class label, global image id, worker rank, step.
    """

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = capacity
        self.incarnation = uuid.uuid4().hex  # changes when Ray restarts the actor
        self.rng = np.random.default_rng(seed)
        self.embeddings: np.ndarray | None = None  # allocated on the first push (D unknown)
        self.labels = np.zeros(capacity, np.int64)
        self.image_ids = np.zeros(capacity, np.int64)
        self.ranks = np.zeros(capacity, np.int64)
        self.steps = np.zeros(capacity, np.int64)
        self.size = 0
        self.cursor = 0
        self.pushes = 0
        self.samples = 0

    def push(self, embeddings: np.ndarray, labels: np.ndarray, image_ids: np.ndarray,
             rank: int, step: int) -> None:
        n = len(labels)
        if n == 0:
            return
        if self.embeddings is None or self.embeddings.shape[1] != embeddings.shape[1]:
            self.embeddings = np.zeros((self.capacity, embeddings.shape[1]), np.float32)
            self.size = self.cursor = 0
        if n > self.capacity:  # keep the newest rows only
            embeddings, labels, image_ids = embeddings[-self.capacity:], labels[-self.capacity:], image_ids[-self.capacity:]
            n = self.capacity
        rows = (self.cursor + np.arange(n)) % self.capacity
        self.embeddings[rows] = embeddings
        self.labels[rows] = labels
        self.image_ids[rows] = image_ids
        self.ranks[rows] = rank
        self.steps[rows] = step
        self.cursor = int((self.cursor + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        self.pushes += 1

    def sample(self, n: int, *, step: int, max_staleness: int) -> dict[str, np.ndarray | str]:
        """Up to ``n`` random rows pushed at most ``max_staleness`` steps before ``step``."""
        self.samples += 1
        fresh = np.flatnonzero(self.steps[: self.size] >= step - max_staleness)
        if len(fresh) > n:
            fresh = self.rng.choice(fresh, size=n, replace=False)
        dim = 0 if self.embeddings is None else self.embeddings.shape[1]
        return {
            "embeddings": (self.embeddings[fresh] if self.embeddings is not None
                           else np.zeros((0, dim), np.float32)),
            "labels": self.labels[fresh], "image_ids": self.image_ids[fresh],
            "ranks": self.ranks[fresh], "steps": self.steps[fresh],
            "incarnation": self.incarnation,
        }

    def stats(self) -> dict:
        return {"size": self.size, "capacity": self.capacity, "pushes": self.pushes,
                "samples": self.samples, "incarnation": self.incarnation}


def store_actor_name(run_name: str, shard: int = 0) -> str:
    return f"pdml-embedding-store-{run_name}" + (f"-shard{shard}" if shard else "")


def shard_of(rank: int, shards: int) -> int:
    """The store shard worker ``rank`` uses: workers r, r + shards, ... share one."""
    return rank % shards


def create_store(run_name: str, capacity: int, seed: int = 0, *, shard: int = 0
                 ) -> ray.actor.ActorHandle:
    """Start the store (or one shard of it) from the driver, outside the trainer's
    placement group.

    ``num_cpus=0`` because the training workers hold the CPUs; ``max_restarts=-1`` so
    a killed store comes back (empty) instead of failing the run.
    """
    actor_cls = ray.remote(EmbeddingStore)
    return actor_cls.options(name=store_actor_name(run_name, shard), namespace=STORE_NAMESPACE,
                             num_cpus=0, max_restarts=-1, max_task_retries=0,
                             get_if_exists=True).remote(capacity, seed + shard)


def create_stores(run_name: str, capacity: int, shards: int, seed: int = 0
                  ) -> list[ray.actor.ActorHandle]:
    """The ``shards`` actors of a sharded store, each holding ``capacity`` points of its
    group of workers (:func:`shard_of`)."""
    return [create_store(run_name, capacity, seed, shard=shard) for shard in range(shards)]


class StoreClient:
    """A worker's fault-tolerant view of the store: the
    :class:`~pdml_ray.mining.EmbeddingSampler` that the store miner draws from.

    Every call is guarded: when the actor is gone or restarting, the call returns
    nothing, the worker mines in-batch for that step, and the handle is looked up
    again on a later step. A sample is requested one step ahead so its latency
    overlaps the forward pass.
    """

    def __init__(self, name: str, *, rank: int, timeout_s: float = 5.0, retry_every: int = 5):
        self.name, self.rank = name, rank
        self.timeout_s, self.retry_every = timeout_s, retry_every
        self.handle: ray.actor.ActorHandle | None = None
        self.pending = None
        self.failed_at_step: int | None = None
        self.incarnation: str | None = None
        self.restarts = 0
        self.failures = 0

    def _actor(self, step: int):
        if self.handle is not None:
            return self.handle
        if self.failed_at_step is not None and step - self.failed_at_step < self.retry_every:
            return None
        try:
            self.handle = ray.get_actor(self.name, namespace=STORE_NAMESPACE)
            self.failed_at_step = None
        except ValueError:
            self._fail(step, "not found")
        return self.handle

    def _fail(self, step: int, why: str) -> None:
        self.failures += 1
        if self.handle is not None or self.failed_at_step is None:
            log.warning("EmbeddingStore unavailable at step %d (%s): mining in-batch meanwhile",
                        step, why)
        self.handle, self.pending, self.failed_at_step = None, None, step

    def request(self, n: int, *, step: int, max_staleness: int) -> None:
        actor = self._actor(step)
        if actor is not None:
            self.pending = actor.sample.remote(n, step=step, max_staleness=max_staleness)

    def collect(self, step: int) -> dict | None:
        """The sample requested earlier, or None when the store could not answer."""
        if self.pending is None:
            return None
        ref, self.pending = self.pending, None
        try:
            sample = ray.get(ref, timeout=self.timeout_s)
        except Exception as exc:  # actor died, restarting, or timed out
            self._fail(step, type(exc).__name__)
            return None
        if self.incarnation is not None and sample["incarnation"] != self.incarnation:
            self.restarts += 1
            log.warning("EmbeddingStore was restarted (now empty); rank %d continues", self.rank)
        self.incarnation = sample["incarnation"]
        return sample

    def push(self, embeddings: np.ndarray, labels: np.ndarray, image_ids: np.ndarray,
             *, step: int) -> None:
        actor = self._actor(step)
        if actor is None:
            return
        try:  # fire and forget: a lost push only means fewer stored points
            actor.push.remote(embeddings, labels, image_ids, self.rank, step)
        except Exception as exc:
            self._fail(step, type(exc).__name__)

