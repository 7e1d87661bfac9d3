"""The PDML loss on hand-built 2-D embeddings, its diagnostics and its gradients; the
Gram-matrix pair distances against plain row differences."""

from __future__ import annotations

import math

import pytest
import torch

from pdml_ray.losses import (PDMLTerms, mine_triplets, pair_distances, pdml_terms,
                             pdml_triplet_loss, safe_distance, triplet_distances, triplet_terms)
from pdml_ray.losses.pdml import GRAM_RELATIVE_FLOOR

# Image 0: anchor A (class 0) at the origin. Image 1: P (class 0) at (3, 4), N (class 1) at
# (0, 1). The only triplet is (A, P, N): dis(+) = 5, dis(-) = 1. Points of image 1 find no
# triplet in image 0 (P has no negative there, N no positive).
EMBEDDINGS = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
LABELS = torch.tensor([0, 0, 1])
IMAGES = torch.tensor([0, 1, 1])


@pytest.mark.parametrize("margin, expected", [
    (20.0, 0.8 * 5 + (5 - 1 + 20)),  # the paper's margin: hinge active
    (2.0, 0.8 * 5 + (5 - 1 + 2)),
])
def test_single_triplet_by_hand(margin, expected):
    loss = pdml_triplet_loss(EMBEDDINGS, LABELS, IMAGES, margin=margin)
    assert loss.item() == pytest.approx(expected)


def test_inactive_hinge_leaves_the_pull_term():
    far = EMBEDDINGS.clone()
    far[2] = torch.tensor([0.0, 30.0])  # dis(-) = 30 > dis(+) + margin
    terms = pdml_terms(far, LABELS, IMAGES, margin=20.0, alpha=0.5, beta=3.0)
    assert terms.loss.item() == pytest.approx(0.5 * 5)
    assert terms.hinge.item() == 0.0 and terms.active_fraction.item() == 0.0


def test_terms_average_over_triplets():
    # Two anchors of class 0 in image 0 against P and N of image 1.
    embeddings = torch.tensor([[0.0, 0.0], [0.0, 10.0], [3.0, 4.0], [0.0, 1.0]])
    labels, images = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1])
    terms = pdml_terms(embeddings, labels, images, margin=1.0, alpha=0.8, beta=1.0)
    # Triplets: (0, 2, 3): d+ 5, d- 1, hinge 5. (1, 2, 3): d+ sqrt(45), d- 9, hinge 0.
    # Image-1 anchors: 2 (class 0) vs image 0 has no negative; 3 (class 1) no positive.
    d1 = math.sqrt(45.0)
    assert isinstance(terms, PDMLTerms) and terms.num_triplets == 2
    assert terms.pos_dist.item() == pytest.approx((5 + d1) / 2)
    assert terms.pull.item() == pytest.approx((5 + d1) / 2)
    assert terms.neg_dist.item() == pytest.approx((1 + 9) / 2)
    assert terms.hinge.item() == pytest.approx(5 / 2)
    assert terms.active_fraction.item() == pytest.approx(0.5)
    assert terms.loss.item() == pytest.approx((0.8 * (5 + d1) + 5) / 2)
    for name in ("pull", "hinge", "pos_dist", "neg_dist", "active_fraction"):
        assert not getattr(terms, name).requires_grad
    pos, neg = triplet_distances(embeddings, labels, images)
    assert pos.tolist() == pytest.approx([5, d1]) and neg.tolist() == pytest.approx([1, 9])


def test_gradient_by_hand():
    embeddings = EMBEDDINGS.clone().requires_grad_(True)
    pdml_triplet_loss(embeddings, LABELS, IMAGES, margin=20.0, alpha=0.8, beta=1.0).backward()
    unit_ap = torch.tensor([3.0, 4.0]) / 5  # direction from A to P
    unit_an = torch.tensor([0.0, 1.0])
    # L = 1.8 * |A-P| - |A-N| + 20
    assert torch.allclose(embeddings.grad[1], 1.8 * unit_ap)
    assert torch.allclose(embeddings.grad[2], -unit_an)
    assert torch.allclose(embeddings.grad[0], -1.8 * unit_ap + unit_an)


def test_no_triplet_is_zero_with_gradient():
    embeddings = torch.randn(3, 4, requires_grad=True)
    terms = pdml_terms(embeddings, torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]))
    assert terms.loss.item() == 0.0 and terms.num_triplets == 0
    assert math.isnan(terms.pos_dist.item()) and math.isnan(terms.neg_dist.item())
    terms.loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros(3, 4))


def test_coinciding_embeddings_have_finite_gradients():
    # Anchor equals its positive and its negative: every distance is 0.
    embeddings = torch.ones(3, 5, requires_grad=True)
    loss = pdml_triplet_loss(embeddings, LABELS, IMAGES, margin=20.0)
    loss.backward()
    assert loss.item() == pytest.approx(20.0, abs=1e-5)
    assert torch.isfinite(embeddings.grad).all()


def test_triplet_terms_match_mined_terms_and_accept_empty():
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(40, 8, generator=g)
    labels = torch.randint(0, 3, (40,), generator=g)
    images = torch.randint(0, 5, (40,), generator=g)
    for pairing in ("paper", "all"):
        t = mine_triplets(labels, images, pairing=pairing)
        explicit = triplet_terms(embeddings[t[:, 0]], embeddings[t[:, 1]], embeddings[t[:, 2]],
                                 margin=4.0, alpha=0.8, beta=1.0)
        mined = pdml_terms(embeddings, labels, images, margin=4.0, pairing=pairing)
        assert explicit.num_triplets == mined.num_triplets > 0
        for a, b in zip(explicit, mined):
            assert float(a) == pytest.approx(float(b), rel=1e-5)
    empty = torch.zeros(0, 8, requires_grad=True)
    terms = triplet_terms(empty, empty, empty, margin=1.0, alpha=1.0, beta=1.0)
    assert terms.loss.item() == 0.0 and terms.num_triplets == 0 and terms.loss.requires_grad
    with pytest.raises(ValueError, match="shape"):
        triplet_terms(embeddings[:2], embeddings[:3], embeddings[:2])


def test_half_precision_distances_are_float32():
    embeddings = EMBEDDINGS.to(torch.bfloat16)
    terms = pdml_terms(embeddings, LABELS, IMAGES)
    assert terms.loss.dtype == torch.float32
    assert terms.pos_dist.item() == pytest.approx(5.0)


# -- pair_distances: Gram-matrix distances against row differences ---------------------
def random_pairs(seed: int, n: int, dim: int, dtype=torch.float64):
    """Embeddings, subgroups of uneven size with arbitrary ids, and pairs within them."""
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, dim, generator=g, dtype=dtype)
    subgroups = torch.randint(0, 4, (n,), generator=g) * 7 - 5
    first, second = [], []
    for i in range(n):
        mates = (subgroups == subgroups[i]).nonzero().squeeze(1)
        for j in mates[torch.randint(0, len(mates), (3,), generator=g)]:
            first.append(i)
            second.append(int(j))
    return embeddings, subgroups, torch.tensor(first), torch.tensor(second)


def test_pair_distances_equal_row_differences_with_their_gradients():
    for seed in range(20):
        embeddings, subgroups, first, second = random_pairs(seed, n=30, dim=6)
        weights = torch.rand(len(first), dtype=torch.float64)
        leaf = embeddings.clone().requires_grad_(True)
        got = pair_distances(leaf, first, second, subgroups if seed % 2 else None)
        (got * weights).sum().backward()
        reference = embeddings.clone().requires_grad_(True)
        want = safe_distance(reference[first], reference[second])
        (want * weights).sum().backward()
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(leaf.grad, reference.grad, rtol=1e-9, atol=1e-12)
        assert (got == 0).any()  # self-pairs were drawn: the exact path was taken too


def test_pair_distances_in_float32_at_paper_width_are_accurate_near_and_far():
    # ReLU-like features sharing a large common part, spread from near-collapse (0.001 of
    # the common part) to far apart: both the Gram path and the exact path are taken.
    g = torch.Generator().manual_seed(0)
    spread = torch.logspace(-3, 1, 64, dtype=torch.float64)[:, None]
    embeddings = (torch.rand(1, 2048, generator=g) * 4 + spread * torch.rand(64, 2048, generator=g)
                  ).double()
    embeddings[-1] = embeddings[0]  # and one exact coincidence
    first = torch.arange(64).repeat(64)
    second = torch.arange(64).repeat_interleave(64)
    exact = safe_distance(embeddings[first], embeddings[second])
    share = exact ** 2 / (embeddings[first].square().sum(1) + embeddings[second].square().sum(1))
    assert (share > 2 * GRAM_RELATIVE_FLOOR).any() and (share < GRAM_RELATIVE_FLOOR / 2).any()
    leaf = embeddings.float().requires_grad_(True)
    got = pair_distances(leaf, first, second)
    got.sum().backward()
    assert got.dtype == torch.float32 and torch.isfinite(leaf.grad).all()
    relative = (got.double() - exact).abs() / exact.clamp_min(1e-30)
    assert relative[exact > 0].max() < 1e-4
    assert (got[exact == 0] == 0).all()


def test_pair_distances_refuse_pairs_across_subgroups():
    embeddings = torch.randn(4, 3)
    with pytest.raises(ValueError, match="subgroup"):
        pair_distances(embeddings, torch.tensor([0]), torch.tensor([3]),
                       torch.tensor([0, 0, 1, 1]))


def test_pair_distances_under_autocast_are_float32():
    embeddings = torch.randn(6, 8)
    first, second = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pair_distances(embeddings.to(torch.bfloat16), first, second)
    assert got.dtype == torch.float32
    rounded = embeddings.to(torch.bfloat16).float()
    torch.testing.assert_close(got, safe_distance(rounded[first], rounded[second]))
