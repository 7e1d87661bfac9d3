"""What every miner takes and gives: a batch's labelled points in, the PDML terms out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from pdml_ray.losses import PDMLTerms


@dataclass
class PointBatch:
    """The labelled points of one local batch.

    embeddings (N, D) carry gradients to the feature map; labels (N,) class ids;
    image_ids (N,) global dataset indices; batch_index (N,) position of the point's image
    in the local batch (0..B-1), from which miners derive subgroups.
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    image_ids: torch.Tensor
    batch_index: torch.Tensor


class TripletMiner(Protocol):
    """Turns a batch's points into the PDML terms of the triplets it mines.

    ``step`` is the global optimizer step the batch trains (the store miner stamps its
    pushes and prefetches the next sample by it). ``stats`` describes the last call
    (e.g. store hits and latency; empty when there is nothing to say); the training step
    logs it beside the loss terms.
    """

    stats: dict[str, float]

    def __call__(self, points: PointBatch, *, step: int) -> PDMLTerms: ...
