"""Cross-image triplet mining over annotated points (the paper's Algorithm 1), vectorised.

Algorithm 1 forms, inside each subgroup of images, every ordered pair of different images
(n, m). For each point i of image n (the anchor) it splits the points of m into positives
(m's points with i's class) and negatives (m's points of any other class), then draws
(positive, negative) pairs, removing both, while each set still holds one: the t-th
positive goes with the t-th negative for t < min(#positives, #negatives). The paper does
not say which point is "selected" first (its line 16); here both sets are taken in
ascending point index, which makes the result deterministic.

``pairing="all"`` instead takes every positive x negative pair of each (anchor, image m),
the usual "batch-all" triplet set, at #positives x #negatives triplets per pair of
anchor and image instead of min(#positives, #negatives).

Output order: triplets are sorted by anchor index, then by the other image's id
(ascending), then by t (``"paper"``) or by (positive index, negative index) (``"all"``).

The implementation forms all (anchor, candidate point) pairs of the same subgroup at
once, anchor-major with candidates sorted by (image, index), so each (anchor, image m)
block is contiguous; ranks and counts inside a block come from cumulative sums. Time and
memory are linear in the number of such pairs (at most N_query x N_key) plus the number
of triplets; there is no Python loop over points, images or triplets.
"""

from __future__ import annotations

import typing

import torch

from pdml_ray.config import Pairing
from pdml_ray.labels import IGNORE_INDEX

PAIRINGS = typing.get_args(Pairing)


def _check_points(name: str, labels: torch.Tensor, image_ids: torch.Tensor,
                  subgroup_ids: torch.Tensor | None) -> None:
    if labels.dim() != 1:
        raise ValueError(f"{name} labels must be 1-D (N,), got shape {tuple(labels.shape)}")
    for what, ids in (("image ids", image_ids), ("subgroup ids", subgroup_ids)):
        if ids is not None and ids.shape != labels.shape:
            raise ValueError(f"{name} {what} must have the labels' shape {tuple(labels.shape)}, "
                             f"got {tuple(ids.shape)}")


def _empty(device: torch.device) -> torch.Tensor:
    return torch.empty((0, 3), dtype=torch.long, device=device)


def _exclusive_cumsum(flags: torch.Tensor) -> torch.Tensor:
    """``out[k]`` = number of True flags strictly before position k."""
    counts = flags.long()
    return counts.cumsum(0) - counts


def mine_triplets_between(query_labels: torch.Tensor, query_image_ids: torch.Tensor,
                          key_labels: torch.Tensor, key_image_ids: torch.Tensor, *,
                          query_subgroup_ids: torch.Tensor | None = None,
                          key_subgroup_ids: torch.Tensor | None = None,
                          pairing: str = "paper", ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Triplets whose anchor is a query point and whose positive and negative are key points.

    For each labelled query point i (the anchor) and each image m among the key points of
    i's subgroup with ``m != image(i)``: positives are the key points of m with i's label,
    negatives those of m with another label (ignored points never take part), each in
    ascending key index; then ``pairing`` pairs them (see the module docstring).

    Args:
        query_labels, query_image_ids: ``(Nq,)`` integer class ids and image ids
            (any integers, e.g. global dataset indices) of the anchors' set.
        key_labels, key_image_ids: ``(Nk,)`` the same for the positives' and negatives' set.
        query_subgroup_ids, key_subgroup_ids: ``(Nq,)``, ``(Nk,)`` subgroup of each point;
            only points of the same subgroup meet. Both None: one subgroup.
        pairing: "paper" (Algorithm 1) or "all" (every positive x negative).
        ignore_index: label of points that take no part.

    Returns:
        ``(T, 3)`` long tensor of ``(anchor, positive, negative)``: column 0 indexes the
        query set, columns 1-2 the key set; sorted by (anchor, image m, t).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    if (query_subgroup_ids is None) != (key_subgroup_ids is None):
        raise ValueError("give subgroup ids for both the query and the key points, or for neither")
    _check_points("query", query_labels, query_image_ids, query_subgroup_ids)
    _check_points("key", key_labels, key_image_ids, key_subgroup_ids)
    device = query_labels.device
    if query_subgroup_ids is None:
        query_subgroup_ids = torch.zeros_like(query_labels)
        key_subgroup_ids = torch.zeros_like(key_labels)

    # Labelled points only; indices refer back to the caller's tensors.
    anchors = torch.nonzero(query_labels != ignore_index).squeeze(1)
    keys = torch.nonzero(key_labels != ignore_index).squeeze(1)
    if anchors.numel() == 0 or keys.numel() == 0:
        return _empty(device)
    anchor_label = query_labels[anchors].long()
    anchor_image = query_image_ids[anchors].long()
    anchor_subgroup = query_subgroup_ids[anchors].long()

    # Keys sorted by (subgroup, image, index): stable sorts, least significant key first.
    keys = keys[torch.argsort(key_image_ids[keys].long(), stable=True)]
    keys = keys[torch.argsort(key_subgroup_ids[keys].long(), stable=True)]
    key_label = key_labels[keys].long()
    key_image = key_image_ids[keys].long()
    key_subgroup = key_subgroup_ids[keys].long().contiguous()

    # Every anchor meets the contiguous block of sorted keys of its subgroup.
    block_start = torch.searchsorted(key_subgroup, anchor_subgroup)
    block_size = torch.searchsorted(key_subgroup, anchor_subgroup, right=True) - block_start
    pair_anchor = torch.repeat_interleave(torch.arange(anchors.numel(), device=device), block_size)
    pair_offset = torch.arange(pair_anchor.numel(), device=device) - torch.repeat_interleave(
        _exclusive_cumsum(block_size), block_size)
    pair_key = block_start[pair_anchor] + pair_offset
    other_image = key_image[pair_key] != anchor_image[pair_anchor]
    pair_anchor, pair_key = pair_anchor[other_image], pair_key[other_image]
    if pair_anchor.numel() == 0:
        return _empty(device)
    pair_image = key_image[pair_key]
    is_pos = key_label[pair_key] == anchor_label[pair_anchor]
    is_neg = ~is_pos

    # Blocks of consecutive pairs sharing (anchor, image m).
    starts_block = torch.ones_like(is_pos)
    starts_block[1:] = (pair_anchor[1:] != pair_anchor[:-1]) | (pair_image[1:] != pair_image[:-1])
    block = starts_block.long().cumsum(0) - 1
    block_first = torch.nonzero(starts_block).squeeze(1)
    pos_before = _exclusive_cumsum(is_pos)
    neg_before = _exclusive_cumsum(is_neg)
    num_pos = torch.zeros(block_first.numel(), dtype=torch.long, device=device).index_add_(
        0, block, is_pos.long())
    num_neg = torch.bincount(block, minlength=block_first.numel()) - num_pos
    # The negatives of all blocks, in order; a block's negatives start at neg_before there.
    negatives = pair_key[is_neg]
    first_negative = neg_before[block_first]

    positives = torch.nonzero(is_pos).squeeze(1)
    pos_block = block[positives]
    pos_rank = pos_before[positives] - pos_before[block_first[pos_block]]
    if pairing == "paper":
        # The t-th positive pairs with the t-th negative while both exist.
        keep = pos_rank < num_neg[pos_block]
        positives, pos_block, neg_rank = positives[keep], pos_block[keep], pos_rank[keep]
    else:
        # Each positive repeats once per negative of its block, negatives in order.
        repeats = num_neg[pos_block]
        positives = torch.repeat_interleave(positives, repeats)
        pos_block = block[positives]
        neg_rank = torch.arange(positives.numel(), device=device) - torch.repeat_interleave(
            _exclusive_cumsum(repeats), repeats)
    negative = negatives[first_negative[pos_block] + neg_rank]
    return torch.stack([anchors[pair_anchor[positives]], keys[pair_key[positives]],
                        keys[negative]], dim=1)


def mine_triplets(labels: torch.Tensor, image_ids: torch.Tensor,
                  subgroup_ids: torch.Tensor | None = None, *, pairing: str = "paper",
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Algorithm 1 over one set of points: anchor, positive and negative all come from it.

    Args:
        labels: ``(N,)`` integer class ids, ``ignore_index`` for points taking no part.
        image_ids: ``(N,)`` integer image of each point (any ids, e.g. dataset indices).
        subgroup_ids: ``(N,)`` subgroup of each point's image; None: one subgroup.
        pairing: "paper" (Algorithm 1, lines 15-19) or "all" (every positive x negative).

    Returns:
        ``(T, 3)`` long ``(anchor, positive, negative)`` indices into the N points, sorted
        by (anchor, other image id, t); positive and negative lie in the same image, which
        is not the anchor's.
    """
    return mine_triplets_between(labels, image_ids, labels, image_ids,
                                 query_subgroup_ids=subgroup_ids, key_subgroup_ids=subgroup_ids,
                                 pairing=pairing, ignore_index=ignore_index)
