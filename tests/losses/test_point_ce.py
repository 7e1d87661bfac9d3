"""Point cross-entropy (Eq. 2): closed-form values, ignored pixels, empty input."""

from __future__ import annotations

import math

import pytest
import torch

from pdml_ray.losses import point_cross_entropy, split_cross_entropy

IGNORE = 255


def test_one_hot_logits_closed_form():
    # Logit s on the labelled class and 0 on the C - 1 others: CE = log(1 + (C-1) e^-s).
    num_classes, s = 4, 3.0
    labels = torch.full((1, 2, 3), IGNORE)
    labels[0, 0, 1], labels[0, 1, 2] = 2, 0
    logits = torch.zeros(1, num_classes, 2, 3)
    logits[0, 2, 0, 1] = s
    logits[0, 0, 1, 2] = s
    logits[0, 1] = 50.0  # a confident wrong class on every unlabelled pixel must not count
    logits[0, 1, 0, 1] = logits[0, 1, 1, 2] = 0.0
    expected = math.log(1 + (num_classes - 1) * math.exp(-s))
    assert point_cross_entropy(logits, labels).item() == pytest.approx(expected)


def test_mean_over_labelled_pixels_of_the_whole_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    labels = torch.full((2, 6, 7), IGNORE)
    labels[0, 1, 1], labels[0, 2, 3], labels[1, 5, 6] = 1, 4, 0
    log_p = logits.log_softmax(dim=1)
    expected = -(log_p[0, 1, 1, 1] + log_p[0, 4, 2, 3] + log_p[1, 0, 5, 6]) / 3
    assert point_cross_entropy(logits, labels).item() == pytest.approx(expected.item())


def test_nothing_labelled_is_zero_with_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = point_cross_entropy(logits, torch.full((2, 4, 4), IGNORE))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_flat_points_and_custom_ignore_index():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    loss = point_cross_entropy(logits, torch.tensor([0, -1]), ignore_index=-1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)))


def test_split_cross_entropy_weighs_points_and_extended_pixels_apart():
    # 2 points (CE a each) and 6 extended pixels (CE b each): pooled (2a + 6b) / 8,
    # split a + b.
    num_classes, s, t = 3, 2.0, 0.5
    a = math.log(1 + (num_classes - 1) * math.exp(-s))
    b = math.log(1 + (num_classes - 1) * math.exp(-t))
    points = torch.full((1, 4, 4), IGNORE)
    points[0, 0, 0], points[0, 3, 3] = 1, 2
    labels = points.clone()
    labels[0, 1, :3] = 1
    labels[0, 2, 1:] = 2
    logits = torch.zeros(1, num_classes, 4, 4)
    logits[0, 1, 0, 0] = logits[0, 2, 3, 3] = s
    logits[0, 1, 1, :3] = logits[0, 2, 2, 1:] = t
    assert point_cross_entropy(logits, labels).item() == pytest.approx((2 * a + 6 * b) / 8)
    assert split_cross_entropy(logits, labels, points).item() == pytest.approx(a + b)
    # Without extended pixels it is the point CE; gradients reach the logits.
    leaf = logits.clone().requires_grad_(True)
    split = split_cross_entropy(leaf, points, points)
    assert split.item() == pytest.approx(a)
    split.backward()
    assert leaf.grad[0, :, 0, 0].abs().sum() > 0 and leaf.grad[0, :, 1, 1].abs().sum() == 0


def _balanced_reference(logits, labels, points, weight):
    """Slow loop: the points' mean, plus weight x the mean over classes of each extended
    class's mean CE."""
    log_p = logits.log_softmax(dim=1)
    point_terms, by_class = [], {}
    for b, y, x in torch.nonzero(labels != IGNORE).tolist():
        c = int(labels[b, y, x])
        nll = -log_p[b, c, y, x].item()
        if points[b, y, x] != IGNORE:
            point_terms.append(nll)
        else:
            by_class.setdefault(c, []).append(nll)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return mean(point_terms) + weight * mean([mean(v) for v in by_class.values()])


@pytest.mark.parametrize("seed", range(5))
def test_balanced_split_cross_entropy_matches_a_loop_over_classes(seed):
    g = torch.Generator().manual_seed(seed)
    num_classes = 5
    logits = 3 * torch.randn(2, num_classes, 9, 11, generator=g)
    points = torch.full((2, 9, 11), IGNORE)
    labels = torch.full((2, 9, 11), IGNORE)
    # A few points, and an extension that labels classes by very different counts.
    keep = torch.rand(2, 9, 11, generator=g)
    classes = torch.randint(0, num_classes, (2, 9, 11), generator=g)
    labels = torch.where(keep < 0.3 + 0.1 * classes, classes, labels)
    points = torch.where(keep < 0.05, classes, points)
    labels = torch.where(points != IGNORE, points, labels)
    want = _balanced_reference(logits, labels, points, weight=0.7)
    got = split_cross_entropy(logits, labels, points, extended_weight=0.7, balanced=True)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_balanced_weighs_each_extended_class_once():
    # 1 point (CE a); class 1 extended on 12 pixels at CE b, class 2 on 1 pixel at CE c:
    # balanced a + (b + c) / 2, where the pooled extended mean is (12 b + c) / 13.
    num_classes, s, t, u = 3, 2.0, 0.5, -1.0
    ce = lambda z: math.log(1 + (num_classes - 1) * math.exp(-z))  # noqa: E731
    points = torch.full((1, 4, 4), IGNORE)
    points[0, 0, 0] = 1
    labels = torch.full((1, 4, 4), 1)
    labels[0, 3, 3] = 2
    labels[0, 3, 2] = labels[0, 2, 3] = IGNORE
    logits = torch.zeros(1, num_classes, 4, 4)
    logits[0, 1] = t
    logits[0, 1, 0, 0] = s
    logits[0, 2, 3, 3] = u
    logits[0, 1, 3, 3] = 0.0
    balanced = split_cross_entropy(logits, labels, points, balanced=True)
    assert balanced.item() == pytest.approx(ce(s) + (ce(t) + ce(u)) / 2)
    pooled = split_cross_entropy(logits, labels, points)
    assert pooled.item() == pytest.approx(ce(s) + (12 * ce(t) + ce(u)) / 13)
    # Nothing extended: the point CE, with gradient.
    leaf = logits.clone().requires_grad_(True)
    only_points = split_cross_entropy(leaf, points, points, balanced=True)
    assert only_points.item() == pytest.approx(ce(s))
    only_points.backward()
    assert leaf.grad[0, :, 0, 0].abs().sum() > 0 and leaf.grad[0, :, 1, 1].abs().sum() == 0
