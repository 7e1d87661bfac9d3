"""Triplet mining scopes for the PDML loss, in plain PyTorch (no Ray, no MLflow).

- ``in_batch``: :class:`InBatchMiner`, subgroups of one worker's batch.
- ``global``: :class:`GlobalSubgroupMiner`, subgroups of the global batch after a
  differentiable all_gather across the torch.distributed process group.
- ``global+store``: :class:`StoreMiner` adds triplets whose positive and negative come
  from an :class:`EmbeddingSampler` (the service's EmbeddingStore actor).

Every miner is a :class:`TripletMiner`: ``miner(points, step=step)`` returns the PDML
terms of a :class:`PointBatch`, and ``miner.stats`` describes that call.
"""

from pdml_ray.mining.base import PointBatch, TripletMiner
from pdml_ray.mining.build import build_miner
from pdml_ray.mining.gather import GatheredPoints, gather_points
from pdml_ray.mining.global_subgroups import GlobalSubgroupMiner
from pdml_ray.mining.in_batch import InBatchMiner
from pdml_ray.mining.recording import RecordingMiner
from pdml_ray.mining.store import EmbeddingSampler, StoreMiner

__all__ = [
    "EmbeddingSampler", "GatheredPoints", "GlobalSubgroupMiner", "InBatchMiner", "PointBatch",
    "RecordingMiner", "StoreMiner", "TripletMiner", "build_miner", "gather_points",
]
