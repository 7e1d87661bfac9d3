"""Online label extension (the paper's Eqs. 6-7) and its accuracy.

During training the current classifier's confident predictions near the annotated points
become extra labels for the point cross-entropy:

- score (Eq. 6): pixel u is a candidate for class c = argmax_c p(c | u) when
  ``max_c p(c | u) > threshold`` and c occurs among the image's points;
- region: pixel u is a candidate for class c when it lies in the ``window x window``
  square centred on a point of class c;
- score+region (Eq. 7, the paper's method): candidates of both, for the same class, i.e.
  the argmax at u is c, it is confident, and u lies in the square of a point of class c.

Points always keep their own labels; every pixel not extended is ``ignore_index``.

The region test reads each pixel's ``window x window`` neighbourhood of the point label
map (``F.unfold``) instead of max-pooling one-hot class maps: memory is then
``window**2 x B x H x W`` whatever the number of classes (150 for ADE20K).
"""

from __future__ import annotations

import typing

import torch
import torch.nn.functional as F

from pdml_ray.config import ExtensionMethod
from pdml_ray.labels import IGNORE_INDEX

EXTENSION_METHODS = typing.get_args(ExtensionMethod)


def _neighbourhood_labels(point_labels: torch.Tensor, window: int,
                          ignore_index: int) -> torch.Tensor:
    """``(B, window**2, H, W)``: the point labels in each pixel's square, row-major offsets."""
    batch, height, width = point_labels.shape
    half = window // 2
    # float32 holds integer labels exactly; padding with ignore keeps borders label-free.
    padded = F.pad(point_labels.float().unsqueeze(1), (half, half, half, half), value=ignore_index)
    patches = F.unfold(padded, kernel_size=window)  # (B, window**2, H*W)
    return patches.long().view(batch, window * window, height, width)


def _chebyshev_offsets(window: int, device: torch.device) -> torch.Tensor:
    """``(window**2,)`` Chebyshev distance of each offset of the square from its centre."""
    half = window // 2
    steps = torch.arange(-half, half + 1, device=device).abs()
    return torch.maximum(steps[:, None], steps[None, :]).reshape(-1)


def _checked(scores: torch.Tensor, point_labels: torch.Tensor, *, window: int, method: str,
             ignore_index: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The point labels as long and where the points are, after checking the arguments."""
    if method not in EXTENSION_METHODS:
        raise ValueError(f"method must be one of {', '.join(EXTENSION_METHODS)}, got {method!r}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    if scores.dim() != 4 or scores.shape[0] != point_labels.shape[0] \
            or scores.shape[2:] != point_labels.shape[1:]:
        raise ValueError(f"expected {what} (B, C, H, W) and point_labels (B, H, W), got "
                         f"{tuple(scores.shape)} and {tuple(point_labels.shape)}")
    num_classes = scores.shape[1]
    point_labels = point_labels.long()
    is_point = point_labels != ignore_index
    if bool(((point_labels[is_point] < 0) | (point_labels[is_point] >= num_classes)).any()):
        raise ValueError(f"point labels must lie in [0, {num_classes}) or be {ignore_index}")
    return point_labels, is_point


@torch.no_grad()
def online_extension(probs: torch.Tensor, point_labels: torch.Tensor, *, threshold: float = 0.7,
                     window: int = 5, method: str = "score+region",
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Extend point labels to confident pixels near the points (Eqs. 6-7).

    Args:
        probs: ``(B, C, H, W)`` softmax probabilities of the current model.
        point_labels: ``(B, H, W)`` class ids at the annotated points, ``ignore_index``
            elsewhere.
        threshold: the paper's thr; a pixel is confident when its max probability is
            strictly greater.
        window: odd side of the square around each point (paper: 5).
        method: "score+region" (Eq. 7), "region" or "score" (paper Table 5).
            "region" labels every pixel in the square of a point of class c with c;
            where squares of different classes overlap, the nearer point (Chebyshev
            distance) wins and equal distances go to the lower class id. "score" labels
            every confident pixel whose argmax occurs among the image's points.
            "score+region" needs the argmax class c to be confident and a point of c
            within the square, so overlaps resolve to the argmax.

    Returns:
        ``(B, H, W)`` long: the points' own labels, extended labels, ``ignore_index``
        elsewhere.
    """
    point_labels, is_point = _checked(probs, point_labels, window=window, method=method,
                                      ignore_index=ignore_index, what="probs")
    num_classes = probs.shape[1]

    if method == "region":
        nearby = _neighbourhood_labels(point_labels, window, ignore_index)
        # Rank neighbours by (Chebyshev distance, class id); ignore ranks last.
        distance = _chebyshev_offsets(window, point_labels.device).view(1, -1, 1, 1)
        rank = (distance * num_classes + nearby).masked_fill(nearby == ignore_index,
                                                             torch.iinfo(torch.long).max)
        extended = nearby.gather(1, rank.argmin(dim=1, keepdim=True)).squeeze(1)
    else:
        confidence, predicted = probs.max(dim=1)
        confident = confidence > threshold
        if method == "score":
            present = torch.zeros(point_labels.shape[0], num_classes + 1, dtype=torch.bool,
                                  device=probs.device)
            # Column num_classes collects the non-points and is never read.
            point_classes = torch.where(is_point, point_labels, num_classes)
            present.scatter_(1, point_classes.flatten(1), True)
            in_label_set = present.gather(1, predicted.flatten(1)).view_as(predicted)
            accept = confident & in_label_set
        else:
            nearby = _neighbourhood_labels(point_labels, window, ignore_index)
            accept = confident & (nearby == predicted.unsqueeze(1)).any(dim=1)
        extended = torch.where(accept, predicted, torch.full_like(predicted, ignore_index))
    return torch.where(is_point, point_labels, extended)


@torch.no_grad()
def predicted_interior(predicted: torch.Tensor, margin: int) -> torch.Tensor:
    """``(B, H, W)`` bool: the pixels whose ``(2 margin + 1)``-square (the part inside the
    image) holds a single predicted class, i.e. more than ``margin`` pixels (Chebyshev)
    from any pixel predicted as another class."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    classes = predicted.float().unsqueeze(1)  # class ids are exact in float32
    size = 2 * margin + 1
    # max_pool2d pads with -inf, so the image's edge is never taken for another class.
    highest = F.max_pool2d(classes, size, stride=1, padding=margin)
    lowest = -F.max_pool2d(-classes, size, stride=1, padding=margin)
    return (highest == lowest).squeeze(1)


@torch.no_grad()
def extend_from_logits(logits: torch.Tensor, point_labels: torch.Tensor, *,
                       threshold: float = 0.7, window: int = 5, method: str = "score+region",
                       boundary_margin: int = 0, ignore_index: int = IGNORE_INDEX
                       ) -> torch.Tensor:
    """:func:`online_extension` of ``softmax(logits)``, computed where it can matter.

    ``boundary_margin`` > 0 then drops the extended pixels within that many pixels of a
    pixel predicted as another class (:func:`predicted_interior`): a model trained on
    points is most often wrong next to its own predicted boundaries, confident or not,
    and its extension labels are least accurate there (docs/benchmarks.md).

    "region" and "score+region" only ever label pixels inside a point's square, a few
    hundred per image, so this reads the logits and takes the softmax at those pixels
    alone instead of over the whole ``(B, C, H, W)`` map (at the paper's 8 x 59 x 321 x 321
    the dense softmax and square test cost ~0.65 s a step on a CPU core; see
    docs/benchmarks.md). "score" needs every pixel and goes the dense way. The result
    equals ``online_extension(logits.float().softmax(1), ...)`` (tests check it).
    """
    extended = _extend_from_logits(logits, point_labels, threshold=threshold, window=window,
                                   method=method, ignore_index=ignore_index)
    if not boundary_margin:
        return extended
    keep = predicted_interior(logits.argmax(dim=1), boundary_margin)
    keep |= point_labels.long() != ignore_index  # the points keep their own labels
    return torch.where(keep, extended, torch.full_like(extended, ignore_index))


def _extend_from_logits(logits: torch.Tensor, point_labels: torch.Tensor, *, threshold: float,
                        window: int, method: str, ignore_index: int) -> torch.Tensor:
    point_labels, is_point = _checked(logits, point_labels, window=window, method=method,
                                      ignore_index=ignore_index, what="logits")
    if method == "score":
        return online_extension(logits.float().softmax(dim=1), point_labels,
                                threshold=threshold, window=window, method=method,
                                ignore_index=ignore_index)
    batch, num_classes, height, width = logits.shape
    device = logits.device
    image, row, col = is_point.nonzero(as_tuple=True)
    point_class = point_labels[image, row, col]
    half = window // 2
    steps = torch.arange(-half, half + 1, device=device)
    d_row, d_col = steps.repeat_interleave(window), steps.repeat(window)  # row-major offsets
    # Candidates: every (point, offset) pixel inside the image, carrying the point's class.
    rows, cols = row[:, None] + d_row, col[:, None] + d_col
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    image = image[:, None].expand_as(rows)[inside]
    candidate_class = point_class[:, None].expand_as(rows)[inside]
    rows, cols = rows[inside], cols[inside]
    pixel = (image * height + rows) * width + cols
    extended = torch.full((batch * height * width,), ignore_index, dtype=torch.long, device=device)
    if method == "region":
        # Nearest point (Chebyshev distance) first, then the lower class id, as the dense rule.
        distance = torch.maximum(d_row.abs(), d_col.abs()).expand(inside.shape[0], -1)[inside]
        rank = distance * num_classes + candidate_class
        best = torch.full_like(extended, torch.iinfo(torch.long).max).scatter_reduce(
            0, pixel, rank, reduce="amin")
        extended[pixel] = best[pixel] % num_classes
    else:
        distinct, which = torch.unique(pixel, return_inverse=True)
        at = distinct // width
        probs = logits[at // height, :, at % height, distinct % width].float().softmax(dim=1)
        confidence, predicted = probs.max(dim=1)
        accept = (confidence[which] > threshold) & (predicted[which] == candidate_class)
        extended[pixel[accept]] = candidate_class[accept]
    return torch.where(is_point, point_labels, extended.view(batch, height, width))


def extension_accuracy(extended: torch.Tensor, point_labels: torch.Tensor, mask: torch.Tensor,
                       ignore_index: int = IGNORE_INDEX) -> tuple[int, int]:
    """How many newly labelled pixels match the dense ground truth (paper Table 5).

    Args:
        extended: ``(B, H, W)`` output of :func:`online_extension`.
        point_labels: ``(B, H, W)`` the original points.
        mask: ``(B, H, W)`` dense ground truth, ``ignore_index`` where unknown.

    Returns:
        ``(correct, total)`` over pixels labelled in ``extended``, not a point, and not
        ignored in ``mask``. The accuracy is ``correct / total`` (undefined at total 0).
    """
    new = (extended != ignore_index) & (point_labels == ignore_index) & (mask != ignore_index)
    correct = (new & (extended == mask)).sum()
    return int(correct), int(new.sum())
