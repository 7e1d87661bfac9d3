"""The vectorised mining and loss against slow references written straight from the paper.

``algorithm1`` follows Algorithm 1 line by line (loops over subgroups, ordered image
pairs, anchors, candidate points); ``between_reference`` is the same rule for an anchor
set and a separate key set. The loss reference evaluates Eqs. 3-5 per triplet in Python
floats.
"""

from __future__ import annotations

import math

import pytest
import torch

from pdml_ray.losses import mine_triplets, mine_triplets_between, pdml_terms, triplet_distances

IGNORE = 255


def algorithm1(labels, image_ids, subgroup_ids, pairing):
    """Algorithm 1 of the paper; "select" takes the lowest remaining index."""
    labels, image_ids = labels.tolist(), image_ids.tolist()
    subgroup_ids = [0] * len(labels) if subgroup_ids is None else subgroup_ids.tolist()
    points = [i for i in range(len(labels)) if labels[i] != IGNORE]
    triplets = []
    for s in sorted({subgroup_ids[i] for i in points}):  # line 2: each subgroup
        images = sorted({image_ids[i] for i in points if subgroup_ids[i] == s})
        for n in images:  # line 3
            for m in images:  # line 4: every other image of the subgroup
                if m == n:
                    continue
                E_n = [i for i in points if subgroup_ids[i] == s and image_ids[i] == n]
                E_m = [j for j in points if subgroup_ids[j] == s and image_ids[j] == m]
                for i in E_n:  # line 6
                    E_pos, E_neg = [], []
                    for j in E_m:  # lines 8-14
                        (E_pos if labels[j] == labels[i] else E_neg).append(j)
                    if pairing == "paper":
                        while E_pos and E_neg:  # lines 15-19
                            triplets.append((i, E_pos.pop(0), E_neg.pop(0)))
                    else:
                        triplets.extend((i, p, q) for p in E_pos for q in E_neg)
    # The documented output order: anchor, then the other image's id, then t (stable).
    triplets.sort(key=lambda t: (t[0], image_ids[t[1]]))
    return triplets


def between_reference(q_labels, q_images, k_labels, k_images, q_sub, k_sub, pairing):
    q_labels, q_images, k_labels, k_images = (x.tolist() for x in (q_labels, q_images,
                                                                  k_labels, k_images))
    q_sub = [0] * len(q_labels) if q_sub is None else q_sub.tolist()
    k_sub = [0] * len(k_labels) if k_sub is None else k_sub.tolist()
    triplets = []
    for i in range(len(q_labels)):
        if q_labels[i] == IGNORE:
            continue
        candidates = [j for j in range(len(k_labels)) if k_labels[j] != IGNORE
                      and k_sub[j] == q_sub[i] and k_images[j] != q_images[i]]
        for m in sorted({k_images[j] for j in candidates}):
            pos = [j for j in candidates if k_images[j] == m and k_labels[j] == q_labels[i]]
            neg = [j for j in candidates if k_images[j] == m and k_labels[j] != q_labels[i]]
            if pairing == "paper":
                triplets.extend((i, p, q) for p, q in zip(pos, neg))
            else:
                triplets.extend((i, p, q) for p in pos for q in neg)
    return triplets


def loss_reference(embeddings, triplets, margin, alpha, beta):
    if not triplets:
        return 0.0
    rows = embeddings.tolist()
    total = 0.0
    for a, p, n in triplets:
        pos = math.dist(rows[a], rows[p])
        neg = math.dist(rows[a], rows[n])
        total += alpha * pos + beta * max(pos - neg + margin, 0.0)  # Eqs. 3-5
    return total / len(triplets)


def random_points(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(0, 36, (1,), generator=g))
    num_images = int(torch.randint(1, 7, (1,), generator=g))
    num_classes = int(torch.randint(1, 5, (1,), generator=g))
    images = torch.randint(0, num_images, (n,), generator=g) * 37 + 1000  # arbitrary ids
    labels = torch.randint(0, num_classes, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.15] = IGNORE
    subgroups = None
    if seed % 3:
        # Subgroups of images (as the trainer forms them), ids not contiguous.
        subgroups = (images // 37) % max(1, seed % 4) * 5 - 3
    return labels, images, subgroups


@pytest.mark.parametrize("pairing", ["paper", "all"])
def test_mining_matches_algorithm1(pairing):
    for seed in range(100):
        labels, images, subgroups = random_points(seed)
        got = mine_triplets(labels, images, subgroups, pairing=pairing)
        assert got.dtype == torch.long and got.shape[1] == 3
        assert [tuple(t) for t in got.tolist()] == algorithm1(labels, images, subgroups, pairing), seed


@pytest.mark.parametrize("pairing", ["paper", "all"])
def test_mining_between_matches_reference(pairing):
    for seed in range(60):
        q_labels, q_images, q_sub = random_points(seed)
        k_labels, k_images, k_sub = random_points(seed + 1000)
        if (q_sub is None) != (k_sub is None):
            q_sub = k_sub = None
        got = mine_triplets_between(q_labels, q_images, k_labels, k_images,
                                    query_subgroup_ids=q_sub, key_subgroup_ids=k_sub,
                                    pairing=pairing)
        want = between_reference(q_labels, q_images, k_labels, k_images, q_sub, k_sub, pairing)
        assert [tuple(t) for t in got.tolist()] == want, seed


@pytest.mark.parametrize("pairing", ["paper", "all"])
def test_loss_matches_reference(pairing):
    margin, alpha, beta = 1.5, 0.8, 1.0
    for seed in range(60):
        labels, images, subgroups = random_points(seed)
        embeddings = torch.randn(len(labels), 3, generator=torch.Generator().manual_seed(seed),
                                 dtype=torch.float64)
        terms = pdml_terms(embeddings, labels, images, subgroups, margin=margin, alpha=alpha,
                           beta=beta, pairing=pairing)
        triplets = algorithm1(labels, images, subgroups, pairing)
        assert terms.num_triplets == len(triplets)
        assert float(terms.loss) == pytest.approx(
            loss_reference(embeddings, triplets, margin, alpha, beta), rel=1e-12, abs=1e-12)
        pos, neg = triplet_distances(embeddings, labels, images, subgroups, pairing=pairing)
        rows = embeddings.tolist()
        assert pos.tolist() == pytest.approx([math.dist(rows[a], rows[p]) for a, p, _ in triplets])
        assert neg.tolist() == pytest.approx([math.dist(rows[a], rows[n]) for a, _, n in triplets])


@pytest.mark.parametrize("pairing", ["paper", "all"])
@pytest.mark.parametrize("case", ["no points", "one image", "one class", "all ignored",
                                  "identical embeddings", "one point per image"])
def test_edge_cases_match_reference(case, pairing):
    n = 12
    labels = torch.arange(n) % 3
    images = torch.arange(n) // 4
    embeddings = torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if case == "no points":
        labels, images, embeddings = labels[:0], images[:0], embeddings[:0]
    elif case == "one image":
        images = torch.zeros(n, dtype=torch.long)
    elif case == "one class":
        labels = torch.zeros(n, dtype=torch.long)
    elif case == "all ignored":
        labels = torch.full((n,), IGNORE)
    elif case == "identical embeddings":
        embeddings = embeddings[:1].repeat(n, 1)
    elif case == "one point per image":
        images = torch.arange(n)
    embeddings.requires_grad_(True)
    triplets = algorithm1(labels, images, None, pairing)
    got = mine_triplets(labels, images, pairing=pairing)
    assert [tuple(t) for t in got.tolist()] == triplets
    terms = pdml_terms(embeddings, labels, images, margin=2.0, pairing=pairing)
    assert terms.loss.item() == pytest.approx(loss_reference(embeddings.detach(), triplets,
                                                             2.0, 0.8, 1.0))
    terms.loss.backward()
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()
    if case in ("one image", "one class", "all ignored", "no points"):
        assert triplets == [] and terms.loss.item() == 0.0
