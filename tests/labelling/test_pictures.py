"""The overlay of numbered suggestions and the score histogram."""

from __future__ import annotations

import numpy as np

from pdml_ray.labelling.pictures import score_histogram, suggestion_overlay


def test_small_images_are_enlarged_and_each_suggestion_is_a_dot_of_its_class_colour():
    image = np.full((32, 48, 3), 40, dtype=np.uint8)
    marks = [(1, 5, 7, "ball"), (2, 20, 40, "sky")]
    colors = {"ball": (220, 20, 60), "sky": (70, 130, 180)}
    picture = np.asarray(suggestion_overlay(image, marks, colors, min_side=96))
    assert picture.shape == (96, 144, 3)  # 3 x 32 >= 96: the whole factor 3
    for _, y, x, name in marks:
        centre = picture[int((y + 0.5) * 3), int((x + 0.5) * 3)]
        assert tuple(centre) == colors[name]
    # each number is white on a black box right of its dot; elsewhere the image is as it was
    black, white = np.all(picture == 0, axis=2), np.all(picture > 200, axis=2)  # antialiased
    right_of_first = (slice(0, 40), slice(27, 60))
    assert black[right_of_first].any() and white[right_of_first].any()
    assert (picture[60:90, 10:60] == 40).all()


def test_histogram_counts_candidates_and_suggested():
    figure = score_histogram(np.array([0.1, 0.2, 0.9, 0.95]), np.array([0.9, 0.95]))
    axes = figure.axes[0]
    assert axes.get_title() == "2 suggested of 4 candidates"
    heights = [sum(p.get_height() for p in container) for container in axes.containers]
    assert heights == [4, 2]
