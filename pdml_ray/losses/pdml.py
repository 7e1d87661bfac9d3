"""The point-based distance metric learning loss L_t (the paper's Eqs. 3-5).

For a triplet of point embeddings (anchor a, positive p of a's class, negative n of
another class, p and n from another image than a):

    dis(+) = ||a - p||_2,  dis(-) = ||a - n||_2
    L_p = dis(+)                                   (Eq. 4, the pull term)
    L_n = max(dis(+) - dis(-) + margin, 0)         (Eq. 5, the hinge term)
    L_t = alpha * L_p + beta * L_n                 (Eq. 3)

and the loss is the mean of L_t over the mined triplets (Algorithm 1, line 17).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from pdml_ray.labels import IGNORE_INDEX
from pdml_ray.losses.triplet_mining import mine_triplets


class PDMLTerms(NamedTuple):
    """The PDML loss and its diagnostics (the paper's Figures 3 and 4).

    ``loss`` is the scalar to optimise (with gradient); every other field is detached.
    ``pull`` and ``hinge`` are the means of L_p and L_n without alpha and beta; ``pos_dist``
    and ``neg_dist`` the means of dis(+) and dis(-) (``pull == pos_dist`` by Eq. 4, kept
    under both names: one is a loss term, the other a distance to watch). ``active_fraction``
    is the share of triplets whose hinge is positive, i.e. that the margin still pushes.
    With no triplet, ``loss``, ``pull``, ``hinge`` and ``active_fraction`` are 0 and
    ``pos_dist``/``neg_dist`` are NaN (no distance was measured; 0 would look like collapse).
    """

    loss: torch.Tensor
    pull: torch.Tensor
    hinge: torch.Tensor
    pos_dist: torch.Tensor
    neg_dist: torch.Tensor
    num_triplets: int
    active_fraction: torch.Tensor


def safe_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance ``(T,)`` of ``(T, D)`` tensors, in float32 or wider.

    Rows can coincide (e.g. collapsed ReLU features), where d||v||/dv is undefined:
    ``vector_norm``'s backward then gives the zero subgradient, never NaN (a test guards
    this), and it reads the difference once instead of the three passes of
    ``sqrt(sum(v ** 2))``.
    """
    if x.dtype in (torch.float16, torch.bfloat16):  # before the difference: it cancels
        x, y = x.float(), y.float()
    return torch.linalg.vector_norm(x - y, dim=1)


def _terms_from_distances(pos_dist: torch.Tensor, neg_dist: torch.Tensor, *, margin: float,
                          alpha: float, beta: float) -> PDMLTerms:
    hinge = F.relu(pos_dist - neg_dist + margin)
    loss = (alpha * pos_dist + beta * hinge).mean()
    return PDMLTerms(loss=loss, pull=pos_dist.detach().mean(), hinge=hinge.detach().mean(),
                     pos_dist=pos_dist.detach().mean(), neg_dist=neg_dist.detach().mean(),
                     num_triplets=int(pos_dist.numel()),
                     active_fraction=(hinge.detach() > 0).float().mean())


def _no_triplet_terms(*inputs: torch.Tensor) -> PDMLTerms:
    # Keeps the inputs in the graph so every process of a DDP step runs the same backward.
    loss = sum(x.sum() * 0 for x in inputs)
    zero = loss.detach().float()
    nan = torch.full_like(zero, float("nan"))
    return PDMLTerms(loss=loss, pull=zero, hinge=zero, pos_dist=nan, neg_dist=nan,
                     num_triplets=0, active_fraction=zero)


def triplet_terms(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, *,
                  margin: float = 20.0, alpha: float = 0.8, beta: float = 1.0) -> PDMLTerms:
    """PDML terms of explicit triplets: ``anchor``, ``positive``, ``negative`` are ``(T, D)``
    embeddings whose rows form the triplets (e.g. a local anchor and two stored points)."""
    if not anchor.shape == positive.shape == negative.shape or anchor.dim() != 2:
        raise ValueError("anchor, positive and negative must share one (T, D) shape, got "
                         f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}")
    if anchor.shape[0] == 0:
        return _no_triplet_terms(anchor, positive, negative)
    return _terms_from_distances(safe_distance(anchor, positive), safe_distance(anchor, negative),
                                 margin=margin, alpha=alpha, beta=beta)


# A squared distance read off the Gram matrix, |a|^2 + |b|^2 - 2 a.b, loses digits to
# cancellation when it is small against |a|^2 + |b|^2. Pairs closer than this share of
# it are measured by their difference instead, so collapsing embeddings (what the loss
# weight must be watched for) keep exact distances and zero subgradients. Above it, the
# float32 relative error measured at D = 2048 stays below 1e-5 (7e-6 at worst over five
# seeds; tests/losses/test_pdml.py asserts 1e-4).
GRAM_RELATIVE_FLOOR = 0.05


def _subgroup_slots(subgroup_ids: torch.Tensor | None, num_points: int, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Each point's subgroup ``group`` (0..S-1) and ``slot`` within it, S and the largest
    subgroup size M: the coordinates of the point in a padded ``(S, M, D)`` block."""
    if subgroup_ids is None:
        return (torch.zeros(num_points, dtype=torch.long, device=device),
                torch.arange(num_points, device=device), 1, num_points)
    _, group, counts = torch.unique(subgroup_ids, return_inverse=True, return_counts=True)
    order = torch.argsort(group, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(group)
    slot[order] = torch.arange(num_points, device=device) - starts[group[order]]
    return group, slot, counts.numel(), int(counts.max())


def pair_distances(embeddings: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                   subgroup_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distances ``(K,)`` between rows ``first[k]`` and ``second[k]`` of ``(N, D)``
    ``embeddings``, differentiable, in float32 or wider.

    Both points of a pair must share a subgroup (as mined triplets do). Distances come
    from the Gram matrix of each subgroup, one batched matmul over ``(S, M, D)`` blocks:
    gathering and differencing a D-wide row per pair is memory-bound and, at the paper's
    D = 2048, several times slower on a CPU. Near-coinciding pairs (see
    ``GRAM_RELATIVE_FLOOR``) are measured by their difference.
    """
    num_points = embeddings.shape[0]
    if first.numel() == 0:
        return embeddings.new_zeros(0, dtype=torch.promote_types(embeddings.dtype, torch.float32))
    group, slot, num_groups, width = _subgroup_slots(subgroup_ids, num_points, embeddings.device)
    if not torch.equal(group[first], group[second]):
        raise ValueError("pair_distances: every pair must lie within one subgroup")
    wide = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
    blocks = wide.new_zeros(num_groups * width, wide.shape[1]).index_copy(
        0, group * width + slot, wide).view(num_groups, width, -1)
    # Kept out of autocast: a half-precision Gram matrix would lose every small distance.
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        gram = torch.bmm(blocks, blocks.transpose(1, 2)).reshape(-1)
    block_offset = group[first] * (width * width)
    squared_norm = gram[group * (width * width) + slot * (width + 1)]  # each block's diagonal
    norms = squared_norm[first] + squared_norm[second]
    squared = norms - 2 * gram[block_offset + slot[first] * width + slot[second]]
    near = squared <= GRAM_RELATIVE_FLOOR * norms
    distance = squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt()
    if bool(near.any()):
        where = near.nonzero().squeeze(1)
        exact = safe_distance(wide.index_select(0, first[where]), wide.index_select(0, second[where]))
        distance = distance.index_put((where,), exact)
    return distance


def _mined_distances(embeddings: torch.Tensor, triplets: torch.Tensor,
                     subgroup_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """dis(+) and dis(-) ``(T,)`` of mined triplets."""
    num_triplets = triplets.shape[0]
    anchors = triplets[:, 0].repeat(2)
    others = torch.cat([triplets[:, 1], triplets[:, 2]])
    dist = pair_distances(embeddings, anchors, others, subgroup_ids)
    return dist[:num_triplets], dist[num_triplets:]


def mined_triplet_terms(embeddings: torch.Tensor, triplets: torch.Tensor,
                        subgroup_ids: torch.Tensor | None = None, *, margin: float = 20.0,
                        alpha: float = 0.8, beta: float = 1.0) -> PDMLTerms:
    """PDML terms of ``(T, 3)`` row triplets of ``embeddings`` mined within ``subgroup_ids``
    (e.g. a subset of the triplets :func:`mine_triplets` returned)."""
    if triplets.shape[0] == 0:
        return _no_triplet_terms(embeddings)
    pos_dist, neg_dist = _mined_distances(embeddings, triplets, subgroup_ids)
    return _terms_from_distances(pos_dist, neg_dist, margin=margin, alpha=alpha, beta=beta)


def _check_embeddings(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if embeddings.dim() != 2 or embeddings.shape[0] != labels.shape[0]:
        raise ValueError(f"embeddings must be (N, D) with N = len(labels) = {labels.shape[0]}, "
                         f"got {tuple(embeddings.shape)}")


def pdml_terms(embeddings: torch.Tensor, labels: torch.Tensor, image_ids: torch.Tensor,
               subgroup_ids: torch.Tensor | None = None, *, margin: float = 20.0,
               alpha: float = 0.8, beta: float = 1.0, pairing: str = "paper",
               ignore_index: int = IGNORE_INDEX) -> PDMLTerms:
    """Mine the triplets of a batch of points (Algorithm 1) and score them (Eqs. 3-5).

    Args:
        embeddings: ``(N, D)`` point embeddings (gradients flow back through them).
        labels: ``(N,)`` class ids; ``ignore_index`` points take no part.
        image_ids: ``(N,)`` integer image of each point.
        subgroup_ids: ``(N,)`` subgroup of each point's image; None: one subgroup.
        margin, alpha, beta: the paper's m, alpha, beta (20, 0.8, 1).
        pairing: "paper" or "all", see :func:`~pdml_ray.losses.mine_triplets`.

    Returns:
        :class:`PDMLTerms`; ``loss`` is the mean of L_t over the triplets, 0 (with a zero
        gradient) when there is none.
    """
    _check_embeddings(embeddings, labels)
    triplets = mine_triplets(labels, image_ids, subgroup_ids, pairing=pairing,
                             ignore_index=ignore_index)
    return mined_triplet_terms(embeddings, triplets, subgroup_ids, margin=margin, alpha=alpha,
                               beta=beta)


def pdml_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, image_ids: torch.Tensor,
                      subgroup_ids: torch.Tensor | None = None, *, margin: float = 20.0,
                      alpha: float = 0.8, beta: float = 1.0, pairing: str = "paper",
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The scalar PDML loss L_t averaged over mined triplets; see :func:`pdml_terms`."""
    return pdml_terms(embeddings, labels, image_ids, subgroup_ids, margin=margin, alpha=alpha,
                      beta=beta, pairing=pairing, ignore_index=ignore_index).loss


@torch.no_grad()
def triplet_distances(embeddings: torch.Tensor, labels: torch.Tensor, image_ids: torch.Tensor,
                      subgroup_ids: torch.Tensor | None = None, *, pairing: str = "paper",
                      ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-triplet dis(+) and dis(-), each ``(T,)`` and detached, in mining order.

    For histograms of the distance distributions during training (the paper's Figure 4).
    """
    _check_embeddings(embeddings, labels)
    triplets = mine_triplets(labels, image_ids, subgroup_ids, pairing=pairing,
                             ignore_index=ignore_index)
    if triplets.shape[0] == 0:
        empty = embeddings.new_empty(0, dtype=torch.float32)
        return empty, empty.clone()
    return _mined_distances(embeddings, triplets, subgroup_ids)
