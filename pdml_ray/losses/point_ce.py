"""Point-wise cross-entropy (the paper's Eq. 2), averaged over labelled pixels only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdml_ray.labels import IGNORE_INDEX


def point_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                        ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean negative log-likelihood of the labelled pixels.

    Args:
        logits: ``(B, C, H, W)`` class scores (or ``(N, C)`` for a flat set of points).
        labels: ``(B, H, W)`` long class ids, ``ignore_index`` where there is no label
            (or ``(N,)``).

    Returns:
        A scalar: the sum of ``-log softmax(logits)[label]`` over labelled pixels divided
        by their number, over the whole batch. Eq. 2 normalises per image before Eq. 1
        sums the images; with the same number of points in every image the two differ
        only by the constant factor B. With no labelled pixel it is exactly 0 and still
        carries a (zero) gradient, never NaN.
    """
    num_labelled = (labels != ignore_index).sum()
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    # With nothing labelled the sum is an exact 0 connected to the graph; clamping the
    # count keeps it 0 (not 0/0) without a host sync on the count.
    return total / num_labelled.clamp(min=1)


def split_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, point_labels: torch.Tensor,
                        ignore_index: int = IGNORE_INDEX,
                        extended_weight: float = 1.0, balanced: bool = False) -> torch.Tensor:
    """The mean over the points plus ``extended_weight`` x the mean over the other
    labelled pixels.

    ``labels`` are the points extended online (``point_labels`` plus extended pixels).
    Where :func:`point_cross_entropy` of ``labels`` pools all labels into one mean, this
    keeps the points' term as it is without extension, whatever the extension adds, and
    adds the extended pixels' mean as a second term (0 when there are none).

    ``balanced``: the extended term is the mean over the classes present among the
    extended pixels of each class's own mean, so a class the extension labels by the
    thousand (a confident stuff region) weighs no more than one it labels by the dozen.
    """
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    is_point = point_labels != ignore_index
    is_extended = (labels != ignore_index) & ~is_point
    points = (per_pixel * is_point).sum() / is_point.sum().clamp(min=1)
    if not balanced:
        extended = (per_pixel * is_extended).sum() / is_extended.sum().clamp(min=1)
        return points + extended_weight * extended
    num_classes = logits.shape[1]
    classes = torch.where(is_extended, labels, 0).flatten()
    weights = is_extended.flatten().to(per_pixel.dtype)
    sums = per_pixel.new_zeros(num_classes).scatter_add(0, classes, per_pixel.flatten() * weights)
    counts = per_pixel.new_zeros(num_classes).scatter_add(0, classes, weights)
    present = counts > 0
    # Exactly 0 (still on the graph) when nothing is extended, as the pooled mean.
    extended = (sums / counts.clamp(min=1)).sum() / present.sum().clamp(min=1)
    return points + extended_weight * extended
