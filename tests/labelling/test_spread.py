"""The budget spread: worked examples, and its two rules checked pick by pick on random
candidate sets against a slow reference written from the rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pdml_ray.labelling.spread import image_share, spread_budget


def reference_spread(image, tier, score, budget):
    """The rules applied one pick at a time: the lowest tier left; within it, the best
    candidate of an image below its share if there is one, else the best of any image."""
    share = math.ceil(budget / len(set(image.tolist())))
    left = set(range(len(image)))
    taken: dict[int, int] = {}
    picks = []
    while left and len(picks) < budget:
        level = min(tier[i] for i in left)
        pool = [i for i in left if tier[i] == level]
        below = [i for i in pool if taken.get(image[i], 0) < share]
        best = max(below or pool, key=lambda i: (score[i], -i))
        picks.append(best)
        left.remove(best)
        taken[image[best]] = taken.get(image[best], 0) + 1
    return picks


def random_candidates(rng):
    images = int(rng.integers(1, 6))
    rows = []
    for image in range(images):
        for region in range(int(rng.integers(0, 6))):
            for tier in range(int(rng.integers(1, 4))):
                rows.append((image * 10, tier, float(rng.choice([0.1, 0.5, rng.random()]))))
    if not rows:
        rows = [(0, 0, 0.5)]
    image, tier, score = (np.asarray(column) for column in zip(*rows))
    return image, tier, score


def test_every_region_gets_one_before_any_gets_two():
    # image 0: regions with tiers 0, 1 and tier 0; image 1: one region, tiers 0, 1.
    image = np.array([0, 0, 0, 1, 1])
    tier = np.array([0, 1, 0, 0, 1])
    score = np.array([0.2, 0.99, 0.3, 0.1, 0.98])
    # share = ceil(3 / 2) = 2: the three tier-0 candidates, before either 0.9x second
    assert sorted(spread_budget(image, tier, score, 3).tolist()) == [0, 2, 3]
    # a fourth: image 0 holds its share, so image 1's second (0.98) beats image 0's (0.99)
    assert spread_budget(image, tier, score, 4).tolist() == [2, 0, 3, 4]
    # budget 5: the share is 3, both are below it, and the better second goes first
    assert spread_budget(image, tier, score, 5).tolist() == [2, 0, 3, 1, 4]


def test_an_image_takes_more_than_its_share_only_when_the_others_have_nothing_left():
    # image 0 has four strong first-tier regions, image 1 two weak ones: budget 4, share 2.
    image = np.array([0, 0, 0, 0, 1, 1])
    tier = np.zeros(6, dtype=int)
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    assert spread_budget(image, tier, score, 4).tolist() == [0, 1, 4, 5]
    # image 1 has one candidate only: image 0 takes the rest
    assert spread_budget(image[:5], tier[:5], score[:5], 4).tolist() == [0, 1, 4, 2]


def test_a_budget_beyond_the_candidates_takes_them_all():
    image, tier, score = np.array([3, 3, 7]), np.array([0, 1, 0]), np.array([0.1, 0.2, 0.3])
    assert sorted(spread_budget(image, tier, score, 10).tolist()) == [0, 1, 2]
    assert spread_budget(image[:0], tier[:0], score[:0], 5).tolist() == []


def test_image_share_rounds_up():
    assert image_share(10, 4) == 3 and image_share(8, 4) == 2 and image_share(3, 0) == 3


def test_a_budget_below_one_is_refused():
    with pytest.raises(ValueError, match="budget must be >= 1"):
        spread_budget(np.zeros(1), np.zeros(1), np.zeros(1), 0)


@pytest.mark.parametrize("seed", range(200))
def test_the_rules_hold_pick_by_pick(seed):
    rng = np.random.default_rng(seed)
    image, tier, score = random_candidates(rng)
    budget = int(rng.integers(1, len(image) + 3))
    picks = spread_budget(image, tier, score, budget).tolist()
    assert len(picks) == min(budget, len(image)) and len(set(picks)) == len(picks)
    share = image_share(budget, len(set(image.tolist())))
    taken: dict[int, int] = {}
    left = set(range(len(image)))
    for pick in picks:
        # rule 1: nothing of a lower tier was left behind
        assert tier[pick] == min(tier[i] for i in left)
        # rule 2: over its share only when no other image below its share had one
        if taken.get(image[pick], 0) >= share:
            assert not [i for i in left if tier[i] == tier[pick]
                        and taken.get(image[i], 0) < share]
        left.remove(pick)
        taken[image[pick]] = taken.get(image[pick], 0) + 1
    assert picks == reference_spread(image, tier, score, budget)
