"""Online extension (Eqs. 6-7) against a per-pixel loop written from the equations."""

from __future__ import annotations

import pytest
import torch

from pdml_ray.extension import (extend_from_logits, extension_accuracy, online_extension,
                                predicted_interior)

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


def interior_reference(predicted, margin):
    """Pixel by pixel: no other predicted class within ``margin`` (Chebyshev) in the image."""
    batch, height, width = predicted.shape
    out = torch.zeros(batch, height, width, dtype=torch.bool)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                square = predicted[b, max(y - margin, 0):y + margin + 1,
                                   max(x - margin, 0):x + margin + 1]
                out[b, y, x] = bool((square == predicted[b, y, x]).all())
    return out


@pytest.mark.parametrize("margin", [0, 1, 2])
def test_predicted_interior_matches_a_loop(margin):
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        # Blocky maps (upsampled), so that interiors exist, plus a few stray pixels.
        coarse = torch.randint(0, 4, (2, 3, 4), generator=g)
        predicted = coarse.repeat_interleave(4, 1).repeat_interleave(3, 2)
        predicted.view(-1)[torch.randint(0, predicted.numel(), (3,), generator=g)] = 5
        got = predicted_interior(predicted, margin)
        assert torch.equal(got, interior_reference(predicted, margin)), seed
    assert bool(predicted_interior(predicted, 0).all())  # margin 0 keeps everything


def test_boundary_margin_drops_extended_pixels_next_to_another_predicted_class():
    # Left half confidently class 0, right half class 1, one point of each: "score"
    # extends everything; a margin of 1 drops the two columns at the seam, not the points.
    logits = torch.zeros(1, 2, 6, 8)
    logits[0, 0, :, :4] = 10.0
    logits[0, 1, :, 4:] = 10.0
    points = torch.full((1, 6, 8), IGNORE)
    points[0, 2, 3], points[0, 4, 4] = 0, 1
    plain = extend_from_logits(logits, points, threshold=0.7, method="score")
    assert bool((plain != IGNORE).all())
    kept = extend_from_logits(logits, points, threshold=0.7, method="score", boundary_margin=1)
    want = plain.clone()
    want[0, :, 3:5] = IGNORE
    want[0, 2, 3], want[0, 4, 4] = 0, 1
    assert torch.equal(kept, want)
    for method in ("score+region", "region", "score"):  # margin 0 is the plain extension
        assert torch.equal(extend_from_logits(logits, points, method=method, boundary_margin=0),
                           extend_from_logits(logits, points, method=method))
    with pytest.raises(ValueError, match="margin must be >= 0"):
        predicted_interior(logits.argmax(1), -1)
