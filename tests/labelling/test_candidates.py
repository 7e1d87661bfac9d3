"""Candidates per predicted region on hand-made class maps and scores."""

from __future__ import annotations

import numpy as np
import pytest

from pdml_ray.labelling.candidates import predicted_regions, region_candidates

# Class 1 in two separate blobs (left column block, right column block), class 0 between.
PREDICTED = np.array([
    [1, 1, 0, 0, 1],
    [1, 1, 0, 0, 1],
    [0, 0, 0, 0, 1],
])


def test_regions_are_8_connected_components_of_each_class():
    regions, classes = predicted_regions(PREDICTED)
    assert len(classes) == 3 and sorted(classes.tolist()) == [0, 1, 1]
    assert len(np.unique(regions[PREDICTED == 1])) == 2
    diagonal = np.array([[1, 0], [0, 1]])  # touching corners: one region per class
    assert sorted(predicted_regions(diagonal)[1].tolist()) == [0, 1]


def test_each_region_first_offers_its_best_pixel():
    score = np.arange(15, dtype=float).reshape(3, 5) / 100
    found = region_candidates(score, PREDICTED, per_region=1, suppression_radius=0)
    picked = {(int(y), int(x), int(c)) for y, x, c in zip(found.y, found.x, found.predicted_class)}
    # class 0 region's best is (2, 3); left class-1 blob's (1, 1); right blob's (2, 4)
    assert picked == {(2, 3, 0), (1, 1, 1), (2, 4, 1)}
    assert found.tier.tolist() == [0, 0, 0]
    assert sorted(found.score.tolist()) == pytest.approx([0.06, 0.13, 0.14])


def test_later_candidates_lie_beyond_the_suppression_radius():
    predicted = np.zeros((1, 10), dtype=int)
    score = np.array([[0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.1, 0.5, 0.6, 0.2]])
    found = region_candidates(score, predicted, per_region=3, suppression_radius=2)
    # best 0.9 at x=3; then x in 1..5 is suppressed: best left is 0.6 at x=8; then
    # x in 6..10 suppressed too: 0.1 at x=0.
    assert found.x.tolist() == [3, 8, 0] and found.tier.tolist() == [0, 1, 2]
    assert found.score.tolist() == pytest.approx([0.9, 0.6, 0.1])


def test_a_region_runs_out_of_candidates_and_small_regions_get_none():
    predicted = np.array([[0, 0, 0, 1]])
    score = np.ones((1, 4))
    found = region_candidates(score, predicted, per_region=5, suppression_radius=5,
                              min_region_pixels=2)
    assert found.x.tolist() == [0]  # one candidate for the 3-pixel region, none for the speck


def test_candidates_respect_their_rules_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(30):
        predicted = rng.integers(0, 3, size=(9, 11))
        score = rng.random((9, 11))
        radius = float(rng.uniform(0, 3))
        found = region_candidates(score, predicted, per_region=3, suppression_radius=radius)
        regions, region_classes = predicted_regions(predicted)
        assert set(found.region.tolist()) == set(range(1, len(region_classes) + 1))
        for region in np.unique(found.region):
            mine = found.region == region
            ys, xs = found.y[mine], found.x[mine]
            assert (regions[ys, xs] == region).all()
            assert (predicted[ys, xs] == found.predicted_class[mine]).all()
            assert found.tier[mine].tolist() == list(range(mine.sum()))
            assert found.score[mine][0] == score[regions == region].max()
            gaps = np.hypot(ys[:, None] - ys[None], xs[:, None] - xs[None])
            assert (gaps[np.triu_indices(len(ys), 1)] > radius).all()


def test_candidates_lie_only_where_allowed_but_regions_keep_their_size():
    predicted = np.zeros((4, 6), dtype=int)
    predicted[:, 4:] = 1  # class 1: the two right columns, 8 pixels
    score = np.arange(24, dtype=float).reshape(4, 6)  # best at the bottom right
    allowed = np.zeros((4, 6), dtype=bool)
    allowed[1:3, 1:5] = True
    found = region_candidates(score, predicted, per_region=1, suppression_radius=0,
                              min_region_pixels=8, allowed=allowed)
    # class 0's best allowed pixel is (2, 3); class 1 keeps its 8 pixels, offers (2, 4)
    assert sorted(zip(found.y.tolist(), found.x.tolist())) == [(2, 3), (2, 4)]
