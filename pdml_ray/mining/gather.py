"""Differentiable gathering of point embeddings across DDP processes (torch.distributed).

Global subgroups need every worker's points. ``all_gather_single_autograd`` is
differentiable: its backward is a reduce-scatter, so the gradient a worker receives
for its own embeddings is the *sum* over all workers' losses. Workers hold different
numbers of points, so rows are padded to the largest count before the gather and the
padding is dropped afterwards (padding rows receive no gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_gather_single_autograd


@dataclass
class GatheredPoints:
    """All workers' points in rank order; ``local`` selects this worker's rows."""

    embeddings: torch.Tensor  # (N_total, D), differentiable
    labels: torch.Tensor  # (N_total,)
    image_ids: torch.Tensor  # (N_total,)
    global_position: torch.Tensor  # (N_total,) image position in the global batch
    local: slice


def _gather_fixed(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """Non-differentiable all_gather of equally shaped tensors, stacked on dim 0."""
    out = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(out, tensor)
    return torch.cat(out)


def gather_points(embeddings: torch.Tensor, labels: torch.Tensor, image_ids: torch.Tensor,
                  batch_index: torch.Tensor) -> GatheredPoints:
    """Gather (N_r, D) embeddings and their metadata from every rank r.

    The global batch position of a point is ``batch_index * world + rank``: workers'
    images interleave the way DistributedSampler deals the dataset out (rank r gets
    samples r, r + world, ...), so any subgroup of two or more consecutive positions
    spans workers, as the paper's subgroups span the images of its global batch.
    Numbering rank-major instead would let a subgroup the size of the local batch (the
    default) never leave its worker, and ``global`` mining would equal ``in_batch``.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    device = embeddings.device
    count = torch.tensor([embeddings.shape[0]], device=device, dtype=torch.long)
    counts = _gather_fixed(count, world).tolist()
    width = max(max(counts), 1)
    pad = width - embeddings.shape[0]

    def padded(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x

    position = batch_index * world + rank
    all_embeddings = all_gather_single_autograd(padded(embeddings), 0, dist.group.WORLD)
    meta = torch.stack([labels, image_ids, position], dim=1).long()
    all_meta = _gather_fixed(padded(meta), world)
    keep = torch.cat([torch.arange(r * width, r * width + n, device=device)
                      for r, n in enumerate(counts)])
    offset = sum(counts[:rank])
    return GatheredPoints(embeddings=all_embeddings[keep], labels=all_meta[keep, 0],
                          image_ids=all_meta[keep, 1], global_position=all_meta[keep, 2],
                          local=slice(offset, offset + counts[rank]))
