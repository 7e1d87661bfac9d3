"""Uncertainty measures against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from pdml_ray.labelling.uncertainty import entropy_uncertainty, margin_uncertainty


def logits_of(*pixels: list[float]) -> torch.Tensor:
    """``(C, 1, P)`` logits whose softmax at pixel p is ``pixels[p]`` (log-probabilities)."""
    return torch.tensor(pixels, dtype=torch.float64).log().t()[:, None, :]


def test_margin_is_one_minus_the_gap_between_the_two_best_classes():
    logits = logits_of([0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3])
    assert margin_uncertainty(logits)[0].tolist() == pytest.approx([0.8, 0.6, 1.0])


def test_entropy_is_divided_by_its_largest_value():
    logits = logits_of([0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3], [0.8, 0.1, 0.1])
    expected_third = -(0.8 * math.log(0.8) + 2 * 0.1 * math.log(0.1)) / math.log(3)
    assert entropy_uncertainty(logits)[0].tolist() == pytest.approx(
        [1.5 * math.log(2) / math.log(3), 1.0, expected_third], rel=1e-5)


@pytest.mark.parametrize("measure", [margin_uncertainty, entropy_uncertainty])
def test_a_confident_pixel_scores_near_zero_and_one_class_scores_zero(measure):
    confident = torch.tensor([40.0, 0.0, 0.0])[:, None, None]
    assert float(measure(confident)) == pytest.approx(0.0, abs=1e-6)
    assert measure(torch.randn(1, 3, 4)).eq(0).all()


@pytest.mark.parametrize("measure", [margin_uncertainty, entropy_uncertainty])
def test_both_lie_in_zero_one_and_ignore_a_shift_of_the_logits(measure):
    logits = torch.randn(6, 5, 7, generator=torch.Generator().manual_seed(0)) * 4
    values = measure(logits)
    assert values.shape == (5, 7) and values.min() >= 0 and values.max() <= 1
    assert torch.allclose(measure(logits + 3.0), values, atol=1e-6)
