"""Online extension (Eqs. 6-7) against a per-pixel loop written from the equations."""

from __future__ import annotations

import pytest
import torch

from pdml_ray.extension import extend_from_logits, extension_accuracy, online_extension

IGNORE = 255


def reference(probs, point_labels, threshold, window, method):
    """Eqs. 6-7 pixel by pixel; "region" resolves overlaps to the nearest point, then the
    lower class id."""
    batch, _, height, width = probs.shape
    half = window // 2
    out = torch.full((batch, height, width), IGNORE, dtype=torch.long)
    for b in range(batch):
        points = [(y, x, int(point_labels[b, y, x])) for y in range(height) for x in range(width)
                  if point_labels[b, y, x] != IGNORE]
        label_set = {c for _, _, c in points}
        for y in range(height):
            for x in range(width):
                confidence, predicted = probs[b, :, y, x].max(0)
                predicted = int(predicted)
                in_score = confidence > threshold and predicted in label_set  # Eq. 6
                in_squares = sorted((max(abs(y - py), abs(x - px)), c) for py, px, c in points
                                    if abs(y - py) <= half and abs(x - px) <= half)
                if method == "score" and in_score:
                    out[b, y, x] = predicted
                elif method == "region" and in_squares:
                    out[b, y, x] = in_squares[0][1]
                elif method == "score+region" and in_score and any(
                        c == predicted for _, c in in_squares):  # Eq. 7
                    out[b, y, x] = predicted
        for y, x, c in points:
            out[b, y, x] = c
    return out


def random_case(seed, num_classes=4, size=(11, 13)):
    g = torch.Generator().manual_seed(seed)
    probs = (3 * torch.randn(2, num_classes, *size, generator=g)).softmax(dim=1)
    point_labels = torch.full((2, *size), IGNORE)
    count = 2 * size[0] * size[1]
    chosen = torch.randperm(count, generator=g)[: int(torch.randint(0, 12, (1,), generator=g))]
    point_labels.view(-1)[chosen] = torch.randint(0, num_classes, (len(chosen),), generator=g)
    return probs, point_labels


@pytest.mark.parametrize("method", ["score+region", "region", "score"])
@pytest.mark.parametrize("window", [1, 3, 5])
def test_matches_the_equations(method, window):
    for seed in range(12):
        probs, point_labels = random_case(seed)
        got = online_extension(probs, point_labels, threshold=0.7, window=window, method=method)
        assert got.dtype == torch.long
        assert torch.equal(got, reference(probs, point_labels, 0.7, window, method)), seed


@pytest.mark.parametrize("method", ["score+region", "region", "score"])
@pytest.mark.parametrize("window", [1, 3, 5])
def test_extension_from_logits_equals_the_dense_extension(method, window):
    """The sparse path (softmax at the points' squares only) against the equations."""
    for seed in range(12):
        g = torch.Generator().manual_seed(100 + seed)
        logits = 3 * torch.randn(3, 5, 9, 12, generator=g)
        point_labels = torch.full((3, 9, 12), IGNORE)
        chosen = torch.randperm(3 * 9 * 12, generator=g)[: 4 * seed]  # up to 44 points
        point_labels.view(-1)[chosen] = torch.randint(0, 5, (len(chosen),), generator=g)
        want = reference(logits.softmax(dim=1), point_labels, 0.7, window, method)
        got = extend_from_logits(logits, point_labels, threshold=0.7, window=window,
                                 method=method)
        assert torch.equal(got, want), seed
        half = extend_from_logits(logits.half(), point_labels, threshold=0.7, window=window,
                                  method=method)
        assert torch.equal(half, online_extension(logits.half().float().softmax(dim=1),
                                                  point_labels, threshold=0.7, window=window,
                                                  method=method)), seed


def test_extension_from_logits_checks_its_arguments():
    logits = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="logits"):
        extend_from_logits(logits, torch.full((1, 5, 4), IGNORE))
    with pytest.raises(ValueError, match="point labels"):
        extend_from_logits(logits, torch.full((1, 4, 4), 3))


def test_score_and_region_by_hand():
    # One 5 x 5 image, class 0 everywhere confident except a weak centre; a class-1 point at
    # the centre and a class-0 point in the corner.
    probs = torch.zeros(1, 3, 5, 5)
    probs[0, 0] = 0.9
    probs[0, 2] = 0.1
    probs[0, :, 2, 2] = torch.tensor([0.3, 0.6, 0.1])
    points = torch.full((1, 5, 5), IGNORE)
    points[0, 2, 2], points[0, 0, 0] = 1, 0
    ext = online_extension(probs, points, threshold=0.7, window=3)[0]
    # Class 0 spreads to the 3 x 3 square of the corner point only; the centre point keeps 1.
    expected = torch.full((5, 5), IGNORE)
    expected[0:2, 0:2] = 0
    expected[2, 2] = 1
    assert torch.equal(ext, expected)
    # Score alone takes every confident pixel of a class the image has.
    score = online_extension(probs, points, threshold=0.7, window=3, method="score")[0]
    assert (score == 0).sum() == 24 and score[2, 2] == 1
    # Region alone: ties between the two squares (pixel (1, 1)) go to the nearer point, the
    # centre (distance 1) vs the corner (distance 1): equal, so the lower class id 0 wins.
    region = online_extension(probs, points, window=3, method="region")[0]
    assert region[1, 1] == 0 and region[1, 2] == 1 and region[0, 1] == 0 and region[3, 3] == 1
    assert region[4, 0] == IGNORE


def test_points_win_and_nothing_else_is_labelled_without_points():
    probs = torch.full((1, 2, 4, 4), 0.5)
    probs[0, 0] = 0.95
    probs[0, 1] = 0.05
    none = online_extension(probs, torch.full((1, 4, 4), IGNORE), method="score")
    assert (none == IGNORE).all()  # class 0 is not in the (empty) label set
    points = torch.full((1, 4, 4), IGNORE)
    points[0, 1, 1] = 1  # the classifier disagrees; the annotation stands
    ext = online_extension(probs, points, method="score+region")
    assert ext[0, 1, 1] == 1 and (ext[0] != IGNORE).sum() == 1


def test_invalid_arguments():
    probs, points = random_case(0)
    with pytest.raises(ValueError, match="odd"):
        online_extension(probs, points, window=4)
    with pytest.raises(ValueError, match="method"):
        online_extension(probs, points, method="superpixel")
    bad = points.clone()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        online_extension(probs, bad)


def test_extension_accuracy_counts_new_pixels_only():
    points = torch.full((1, 2, 3), IGNORE)
    points[0, 0, 0] = 1
    extended = torch.tensor([[[1, 1, 2], [0, IGNORE, 2]]])
    mask = torch.tensor([[[1, 1, 0], [0, 1, IGNORE]]])
    # New pixels with known truth: (0,1) right, (0,2) wrong, (1,0) right; (1,2) truth unknown.
    assert extension_accuracy(extended, points, mask) == (2, 3)
