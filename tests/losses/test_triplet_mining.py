"""Triplet mining on hand-built point sets (the reference comparison is in test_pdml_reference)."""

from __future__ import annotations

import pytest
import torch

from pdml_ray.losses import mine_triplets, mine_triplets_between

IGNORE = 255


def as_list(triplets: torch.Tensor) -> list[tuple[int, int, int]]:
    return [tuple(t) for t in triplets.tolist()]


def test_paper_pairing_by_hand():
    # image 10: points 0 (class 1), 1 (class 2); image 20: 2 (1), 3 (1), 4 (3), 5 (2)
    labels = torch.tensor([1, 2, 1, 1, 3, 2])
    images = torch.tensor([10, 10, 20, 20, 20, 20])
    assert as_list(mine_triplets(labels, images)) == [
        (0, 2, 4), (0, 3, 5),  # anchor 0: positives 2, 3 pair with negatives 4, 5
        (1, 5, 2),             # anchor 1: one positive (5), first negative (2)
        (2, 0, 1), (3, 0, 1),  # anchors in image 20 against image 10
        (5, 1, 0),
    ]                          # anchor 4 (class 3) has no positive in image 10


def test_all_pairing_by_hand():
    labels = torch.tensor([1, 2, 1, 1, 3, 2])
    images = torch.tensor([10, 10, 20, 20, 20, 20])
    assert as_list(mine_triplets(labels, images, pairing="all")) == [
        (0, 2, 4), (0, 2, 5), (0, 3, 4), (0, 3, 5),
        (1, 5, 2), (1, 5, 3), (1, 5, 4),
        (2, 0, 1), (3, 0, 1), (5, 1, 0),
    ]


def test_order_follows_image_id_not_position():
    # Anchor 0 meets image 5 (points 3, 4) before image 9 (points 1, 2).
    labels = torch.tensor([0, 0, 1, 0, 1])
    images = torch.tensor([7, 9, 9, 5, 5])
    got = as_list(mine_triplets(labels, images))
    assert got[:2] == [(0, 3, 4), (0, 1, 2)]


def test_subgroups_keep_images_apart():
    labels = torch.tensor([0, 0, 1, 0, 0, 1])
    images = torch.tensor([0, 1, 1, 2, 3, 3])
    subgroups = torch.tensor([0, 0, 0, 1, 1, 1])
    got = mine_triplets(labels, images, subgroups)
    assert as_list(got) == [(0, 1, 2), (3, 4, 5)]
    # One subgroup: image 0 also meets image 3, and image 2 meets image 1.
    assert len(mine_triplets(labels, images)) > 2


def test_ignored_points_take_no_part():
    labels = torch.tensor([0, 0, IGNORE, 1])
    images = torch.tensor([0, 1, 1, 1])
    assert as_list(mine_triplets(labels, images)) == [(0, 1, 3)]
    assert as_list(mine_triplets(labels, images, ignore_index=-1)) == [(0, 1, 2)]


def test_between_indexes_query_and_keys():
    query_labels, query_images = torch.tensor([IGNORE, 4, 7]), torch.tensor([0, 0, 1])
    key_labels = torch.tensor([7, 4, 4, 9, 7])
    key_images = torch.tensor([3, 3, 0, 3, 1])  # key image 0 is the anchor 1's own
    got = mine_triplets_between(query_labels, query_images, key_labels, key_images,
                                pairing="all")
    assert as_list(got) == [(1, 1, 0), (1, 1, 3), (2, 0, 1), (2, 0, 3)]


def test_mine_triplets_is_between_with_itself():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (50,), generator=g)
    images = torch.randint(0, 6, (50,), generator=g)
    subgroups = images // 3
    for pairing in ("paper", "all"):
        assert torch.equal(mine_triplets(labels, images, subgroups, pairing=pairing),
                           mine_triplets_between(labels, images, labels, images,
                                                 query_subgroup_ids=subgroups,
                                                 key_subgroup_ids=subgroups, pairing=pairing))


def test_empty_results_have_shape_t_by_3():
    for labels, images in [(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)),
                           (torch.tensor([0, 1]), torch.tensor([0, 0]))]:
        got = mine_triplets(labels, images)
        assert got.shape == (0, 3) and got.dtype == torch.long


def test_invalid_arguments():
    labels, images = torch.tensor([0, 1]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="pairing"):
        mine_triplets(labels, images, pairing="hard")
    with pytest.raises(ValueError, match="shape"):
        mine_triplets(labels, images[:1])
    with pytest.raises(ValueError, match="both"):
        mine_triplets_between(labels, images, labels, images, query_subgroup_ids=images)
