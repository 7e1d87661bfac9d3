"""Embedding coverage on hand-made embeddings with distances worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pdml_ray.labelling.coverage import (LabelledEmbeddings, embedding_coverage,
                                         nearest_labelled_distance, typical_spacing)


def bank(rows: list[tuple[float, float, int]]) -> LabelledEmbeddings:
    return LabelledEmbeddings(torch.tensor([[a, b] for a, b, _ in rows]),
                              torch.tensor([c for _, _, c in rows]))


# Three pixels in a row with 2-D embeddings (0, 0), (3, 4), (10, 0).
EMBED = torch.tensor([[[0.0, 3.0, 10.0]], [[0.0, 4.0, 0.0]]])


def test_distance_is_to_the_nearest_labelled_point_of_the_predicted_class():
    labelled = bank([(0, 0, 0), (6, 8, 0), (10, 1, 1)])
    predicted = torch.tensor([[0, 0, 1]])
    # pixel 0: class 0, on (0, 0); pixel 1: class 0, 5 from (0, 0) and from (6, 8);
    # pixel 2: class 1, 1 from (10, 1) (the class-0 point (6, 8) is not looked at).
    assert nearest_labelled_distance(EMBED, predicted, labelled)[0].tolist() == pytest.approx(
        [0.0, 5.0, 1.0])


def test_a_class_without_labelled_points_is_infinitely_far_and_fully_uncovered():
    labelled = bank([(0, 0, 0)])
    predicted = torch.tensor([[0, 2, 0]])
    distance = nearest_labelled_distance(EMBED, predicted, labelled)[0]
    assert distance[0] == 0 and math.isinf(distance[1]) and distance[2] == pytest.approx(10.0)
    coverage = embedding_coverage(EMBED, predicted, labelled, spacing=5.0)[0]
    assert coverage.tolist() == pytest.approx([0.0, 1.0, 10 / 15])


def test_coverage_is_d_over_d_plus_spacing():
    labelled = bank([(0, 0, 0)])
    predicted = torch.zeros(1, 3, dtype=torch.int64)
    assert embedding_coverage(EMBED, predicted, labelled, spacing=5.0)[0].tolist() == (
        pytest.approx([0.0, 0.5, 10 / 15]))


def test_typical_spacing_is_the_median_nearest_same_class_distance():
    # class 0: (0,0), (3,4), (0,1): nearest same-class distances 1, sqrt(18), 1.
    # class 1: (20,0), (20,2): 2 and 2. class 2 has one point and no such distance.
    labelled = bank([(0, 0, 0), (3, 4, 0), (0, 1, 0), (20, 0, 1), (20, 2, 1), (50, 50, 2)])
    assert typical_spacing(labelled) == pytest.approx(2.0)  # median of 1, 1, 2, 2, 4.24


def test_typical_spacing_without_same_class_pairs_uses_all_pairs():
    labelled = bank([(0, 0, 0), (3, 4, 1), (6, 8, 2)])  # pairwise 5, 10, 5
    assert typical_spacing(labelled) == pytest.approx(5.0)
    assert typical_spacing(bank([(1, 1, 0)])) == 1.0
    assert typical_spacing(bank([(1, 1, 0), (1, 1, 0)])) == 1.0  # zero would not divide


def test_capped_keeps_at_most_n_per_class_and_every_class():
    classes = torch.tensor([0] * 10 + [1] * 3 + [2])
    labelled = LabelledEmbeddings(torch.arange(14.0)[:, None].repeat(1, 2), classes)
    capped = labelled.capped(4, seed=1)
    assert torch.bincount(capped.classes).tolist() == [4, 3, 1]
    # the kept rows are rows of the original, with their own class
    assert all(int(row[0]) in range(14) and classes[int(row[0])] == cls
               for row, cls in zip(capped.embeddings, capped.classes))
