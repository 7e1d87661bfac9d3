"""Candidate clicks of one image: the best pixels of each predicted connected region.

A region is an 8-connected component of one predicted class (as ``generate_points``
reads instances from a label map). Its first candidate is its highest-scoring pixel; each
further one is the highest-scoring pixel farther than ``suppression_radius`` from the
region's earlier candidates, so a region's candidates are spread over it. A candidate's
``tier`` is its rank within its region (0 = the region's best), which the budget spread
(:mod:`pdml_ray.labelling.spread`) reads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Candidates:
    """Parallel ``(K,)`` arrays: pixel ``y``, ``x`` (int64), ``region`` (int64, 1-based
    within the image), ``tier`` (int64), ``predicted_class`` (int64), ``score`` (float64)."""

    y: np.ndarray
    x: np.ndarray
    region: np.ndarray
    tier: np.ndarray
    predicted_class: np.ndarray
    score: np.ndarray

    @classmethod
    def empty(cls) -> Candidates:
        ints = np.zeros(0, dtype=np.int64)
        return cls(ints, ints, ints, ints, ints, np.zeros(0, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.y)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


def predicted_regions(predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of each predicted class.

    Returns:
        ``regions int64 (h, w)`` numbered 1..n (every pixel belongs to one) and
        ``region_classes int64 (n,)``, the class of region k at index k - 1.
    """
    predicted = np.asarray(predicted)
    regions = np.zeros(predicted.shape, dtype=np.int64)
    classes = []
    count = 0
    for cls in np.unique(predicted):
        components, found = ndimage.label(predicted == cls, structure=EIGHT_CONNECTED)
        regions[components > 0] = components[components > 0] + count
        classes += [int(cls)] * found
        count += found
    return regions, np.asarray(classes, dtype=np.int64)


def region_candidates(score: np.ndarray, predicted: np.ndarray, *, per_region: int,
                      suppression_radius: float, min_region_pixels: int = 1,
                      allowed: np.ndarray | None = None) -> Candidates:
    """Up to ``per_region`` candidates in every predicted region of at least
    ``min_region_pixels`` pixels.

    Args:
        score: ``(h, w)`` how much a click at each pixel is worth (higher is better).
        predicted: ``(h, w)`` integer predicted class per pixel.
        per_region: candidates per region at most, >= 1.
        suppression_radius: a region's next candidate lies farther than this (pixels)
            from its earlier ones.
        min_region_pixels: smaller regions (specks along class borders) get none.
        allowed: ``(h, w)`` bool, where candidates may lie (None: everywhere); a region
            counts its pixels outside it towards its size, but offers none of them.

    Returns:
        :class:`Candidates` ordered by region, then tier. Equal scores go to the first
        pixel in raster order.
    """
    score = np.asarray(score, dtype=np.float64)
    if score.shape != np.shape(predicted) or score.ndim != 2:
        raise ValueError(f"score {score.shape} and predicted {np.shape(predicted)} must be the "
                         f"same (h, w)")
    if per_region < 1:
        raise ValueError(f"per_region must be >= 1, got {per_region}")
    regions, region_classes = predicted_regions(predicted)
    rows: list[tuple[int, int, int, int, int, float]] = []
    for region, box in enumerate(ndimage.find_objects(regions), start=1):
        inside = regions[box] == region
        if inside.sum() < min_region_pixels:
            continue
        ys, xs = np.nonzero(inside)
        values = score[box][ys, xs]
        available = (np.ones(len(ys), dtype=bool) if allowed is None
                     else np.asarray(allowed)[box][ys, xs].copy())
        for tier in range(per_region):
            if not available.any():
                break
            best = int(np.argmax(np.where(available, values, -np.inf)))
            y, x = ys[best], xs[best]
            rows.append((box[0].start + y, box[1].start + x, region, tier,
                         int(region_classes[region - 1]), float(values[best])))
            available &= (ys - y) ** 2 + (xs - x) ** 2 > suppression_radius ** 2
    if not rows:
        return Candidates.empty()
    columns = list(zip(*rows))
    return Candidates(*(np.asarray(column, dtype=np.int64) for column in columns[:5]),
                      np.asarray(columns[5], dtype=np.float64))
