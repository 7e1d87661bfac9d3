"""Embedding coverage: a pixel predicted as class c whose embedding lies far from every
labelled point of class c shows the model something its labels have not covered.

The labelled points are a bank of ``(N, D)`` embeddings with their ``(N,)`` classes,
sampled from the model's embedding map at the clicks a split already has. Distances are
Euclidean, in the embedding space PDML trains (the paper's dis(.)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LabelledEmbeddings:
    """Embeddings of labelled points: ``embeddings float32 (N, D)``, ``classes int64 (N,)``."""

    embeddings: torch.Tensor
    classes: torch.Tensor

    def __post_init__(self) -> None:
        if (self.embeddings.dim() != 2 or self.classes.dim() != 1
                or self.embeddings.shape[0] != self.classes.shape[0]):
            raise ValueError(f"expected embeddings (N, D) and classes (N,), got "
                             f"{tuple(self.embeddings.shape)} and {tuple(self.classes.shape)}")

    @classmethod
    def empty(cls, dim: int) -> LabelledEmbeddings:
        return cls(torch.zeros(0, dim), torch.zeros(0, dtype=torch.int64))

    @classmethod
    def concatenate(cls, parts: list[LabelledEmbeddings], dim: int) -> LabelledEmbeddings:
        if not parts:
            return cls.empty(dim)
        return cls(torch.cat([p.embeddings.float() for p in parts]),
                   torch.cat([p.classes.long() for p in parts]))

    def __len__(self) -> int:
        return self.classes.shape[0]

    def capped(self, per_class: int, seed: int = 0) -> LabelledEmbeddings:
        """At most ``per_class`` points of each class, drawn without replacement (seeded):
        distances to every labelled point cost ``N`` per pixel."""
        generator = torch.Generator().manual_seed(seed)
        keep = []
        for cls in self.classes.unique():
            members = torch.nonzero(self.classes == cls).flatten()
            if len(members) > per_class:
                members = members[torch.randperm(len(members), generator=generator)[:per_class]]
            keep.append(members)
        if not keep:
            return self
        index = torch.cat(keep).sort().values
        return LabelledEmbeddings(self.embeddings[index], self.classes[index])


def typical_spacing(labelled: LabelledEmbeddings) -> float:
    """The distance that counts as "near" a labelled point: the median, over labelled
    points, of the distance to the nearest other labelled point of the same class.

    Classes with one point have no such distance; when no class has two, the median of
    all pairwise distances stands in, and with fewer than two points 1.0. A spacing of 0
    (repeated embeddings) is replaced by 1.0 as well, so it can divide.
    """
    embeddings, classes = labelled.embeddings.float(), labelled.classes
    if len(labelled) < 2:
        return 1.0
    distances = torch.cdist(embeddings, embeddings)
    same_class = classes[:, None] == classes[None, :]
    same_class.fill_diagonal_(False)
    has_partner = same_class.any(dim=1)
    if has_partner.any():
        nearest = distances.masked_fill(~same_class, float("inf")).min(dim=1).values
        spacing = float(nearest[has_partner].median())
    else:
        upper = torch.triu_indices(len(labelled), len(labelled), offset=1)
        spacing = float(distances[upper[0], upper[1]].median())
    return spacing if spacing > 0 else 1.0


def nearest_labelled_distance(embed: torch.Tensor, predicted: torch.Tensor,
                              labelled: LabelledEmbeddings) -> torch.Tensor:
    """Distance from each pixel's embedding to the nearest labelled point of the class
    the pixel is predicted as.

    Args:
        embed: ``(D, h, w)`` embedding map of one image.
        predicted: ``(h, w)`` int64 predicted class per pixel of ``embed``.
        labelled: the bank, embeddings of the same dimension D.

    Returns:
        ``float32 (h, w)``; ``inf`` where the predicted class has no labelled point.
    """
    dim, height, width = embed.shape
    pixels = embed.reshape(dim, -1).t().float()
    flat_predicted = predicted.reshape(-1)
    distance = torch.full((height * width,), float("inf"))
    for cls in flat_predicted.unique():
        bank = labelled.embeddings[labelled.classes == cls].float()
        if not len(bank):
            continue
        where = flat_predicted == cls
        distance[where] = torch.cdist(pixels[where], bank).min(dim=1).values
    return distance.reshape(height, width)


def embedding_coverage(embed: torch.Tensor, predicted: torch.Tensor,
                       labelled: LabelledEmbeddings, spacing: float) -> torch.Tensor:
    """``d / (d + spacing)`` per pixel, d from :func:`nearest_labelled_distance`: 0 on a
    labelled embedding, 1/2 at the typical spacing, towards 1 far away; exactly 1 where
    the predicted class has no labelled point at all.

    Returns:
        ``float32 (h, w)`` in [0, 1].
    """
    if not spacing > 0:
        raise ValueError(f"spacing must be > 0, got {spacing}")
    distance = nearest_labelled_distance(embed, predicted, labelled)
    coverage = distance / (distance + spacing)
    return torch.where(torch.isinf(distance), torch.ones_like(coverage), coverage)
