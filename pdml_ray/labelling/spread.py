"""Spreading a click budget over regions and images.

Two rules, in this order of precedence:

1. A predicted region gets a second suggestion only once every candidate region has
   one (and a third only once every region with a second candidate has two, ...):
   candidates are taken tier by tier, tier k being the k-th best of its region.
2. An image takes more than its share, ``ceil(budget / images with candidates)``, only
   when the others have nothing left: within a tier, candidates of images still below
   their share go first, best score first; the rest of the tier follows, best first.

Rule 1 wins over rule 2: an image with many regions fills its share and then takes more
of its first-tier candidates before any image gets a second click in a region.
"""

from __future__ import annotations

import math

import numpy as np


def image_share(budget: int, images_with_candidates: int) -> int:
    """Suggestions an image takes before the others have nothing left."""
    return math.ceil(budget / max(images_with_candidates, 1))


def spread_budget(image: np.ndarray, tier: np.ndarray, score: np.ndarray,
                  budget: int) -> np.ndarray:
    """The candidates to suggest, in the order the rules pick them.

    Args:
        image: ``(K,)`` integer image of each candidate (any ids).
        tier: ``(K,)`` rank of each candidate within its region, 0 = the region's best.
        score: ``(K,)`` candidate scores; higher is picked first. Ties go to the lower
            index.
        budget: suggestions wanted, >= 1.

    Returns:
        ``int64 (min(budget, K),)`` indices into the candidates, in pick order.
    """
    image, tier, score = (np.asarray(a).reshape(-1) for a in (image, tier, score))
    if not len(image) == len(tier) == len(score):
        raise ValueError(f"image, tier and score differ in length: {len(image)}, {len(tier)}, "
                         f"{len(score)}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    image_ids, image_index = np.unique(image, return_inverse=True)
    share = image_share(budget, len(image_ids))
    taken = np.zeros(len(image_ids), dtype=np.int64)
    picks: list[int] = []
    for level in np.unique(tier):
        members = np.flatnonzero(tier == level)
        # Best score first; a stable sort keeps the lower index first among ties.
        members = members[np.argsort(-score[members], kind="stable")]
        deferred = []
        for candidate in members:  # images below their share
            if len(picks) == budget:
                return np.asarray(picks, dtype=np.int64)
            owner = image_index[candidate]
            if taken[owner] < share:
                taken[owner] += 1
                picks.append(int(candidate))
            else:
                deferred.append(int(candidate))
        for candidate in deferred:  # then anyone, once nobody below its share has any
            if len(picks) == budget:
                return np.asarray(picks, dtype=np.int64)
            taken[image_index[candidate]] += 1
            picks.append(candidate)
    return np.asarray(picks, dtype=np.int64)
