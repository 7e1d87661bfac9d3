"""The discount near clicks, and pixels carried between grids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pdml_ray.labelling.clicks import click_discount, to_grid


def test_discount_is_one_minus_a_gaussian_of_the_distance_to_the_nearest_click():
    discount = click_discount((5, 5), np.array([[0, 0], [4, 4]]), radius=2.0)
    assert discount[0, 0] == 0 and discount[4, 4] == 0
    assert float(discount[0, 3]) == pytest.approx(1 - math.exp(-9 / 8))  # 3 from (0, 0)
    assert float(discount[2, 2]) == pytest.approx(1 - math.exp(-8 / 8))  # sqrt 8 from both
    assert float(discount[4, 1]) == pytest.approx(1 - math.exp(-9 / 8))  # 3 from (4, 4)


def test_no_click_no_discount():
    assert click_discount((3, 4), np.zeros((0, 2)), radius=1.0).eq(1).all()


def test_to_grid_takes_the_pixel_holding_the_centre():
    # 100 -> 12 px: pixel y holds centre (y + 0.5) * 0.12; 99 -> 11.94 -> 11, 0 -> 0,
    # 41 -> 4.98 -> 4, 42 -> 5.1 -> 5.
    assert to_grid(np.array([[0, 99], [41, 42]]), (100, 100), (12, 12)).tolist() == [[0, 11], [4, 5]]
    # and back up: the centre of working pixel 5 of 12 lies at 45.8 of 100 -> 45
    assert to_grid(np.array([[5, 11]]), (12, 12), (100, 100)).tolist() == [[45, 95]]


def test_to_grid_round_trip_returns_each_working_pixel():
    rng = np.random.default_rng(0)
    for _ in range(50):
        small = tuple(int(v) for v in rng.integers(1, 40, size=2))
        large = tuple(int(s * f) for s, f in zip(small, rng.integers(1, 9, size=2)))
        pixels = np.stack([rng.integers(0, small[0], 20), rng.integers(0, small[1], 20)], 1)
        up = to_grid(pixels, small, large)
        assert (up >= 0).all() and (up < np.asarray(large)).all()
        assert (to_grid(up, large, small) == pixels).all()
