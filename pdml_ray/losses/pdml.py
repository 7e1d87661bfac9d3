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
    diff = x - y
    if diff.dtype in (torch.float16, torch.bfloat16):
        diff = diff.float()
    return torch.linalg.vector_norm(diff, dim=1)


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


def _mined_distances(embeddings: torch.Tensor, triplets: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """dis(+) and dis(-) ``(T,)`` of mined triplets, each distinct pair computed once.

    With ``pairing="all"`` one (anchor, point) pair recurs in many triplets; computing
    distances per distinct pair keeps memory at O(pairs x D) instead of O(T x D).
    """
    num_points, num_triplets = embeddings.shape[0], triplets.shape[0]
    pairs = torch.cat([triplets[:, 0] * num_points + triplets[:, 1],
                       triplets[:, 0] * num_points + triplets[:, 2]])
    distinct, where = torch.unique(pairs, return_inverse=True)
    # index_select rather than embeddings[idx]: its backward is an index_add, markedly
    # cheaper on CPU than the accumulating index_put of advanced indexing.
    dist = safe_distance(embeddings.index_select(0, distinct // num_points),
                         embeddings.index_select(0, distinct % num_points))
    return dist[where[:num_triplets]], dist[where[num_triplets:]]


def _check_embeddings(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if embeddings.dim() != 2 or embeddings.shape[0] != labels.shape[0]:
        raise ValueError(f"embeddings must be (N, D) with N = len(labels) = {labels.shape[0]}, "
                         f"got {tuple(embeddings.shape)}")


def pdml_terms(embeddings: torch.Tensor, labels: torch.Tensor, image_ids: torch.Tensor,
               subgroup_ids: torch.Tensor | None = None, *, margin: float = 20.0,
               alpha: float = 0.8, beta: float = 1.0, pairing: str = "paper",
               ignore_index: int = 255) -> PDMLTerms:
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
    if triplets.shape[0] == 0:
        return _no_triplet_terms(embeddings)
    pos_dist, neg_dist = _mined_distances(embeddings, triplets)
    return _terms_from_distances(pos_dist, neg_dist, margin=margin, alpha=alpha, beta=beta)


def pdml_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, image_ids: torch.Tensor,
                      subgroup_ids: torch.Tensor | None = None, *, margin: float = 20.0,
                      alpha: float = 0.8, beta: float = 1.0, pairing: str = "paper",
                      ignore_index: int = 255) -> torch.Tensor:
    """The scalar PDML loss L_t averaged over mined triplets; see :func:`pdml_terms`."""
    return pdml_terms(embeddings, labels, image_ids, subgroup_ids, margin=margin, alpha=alpha,
                      beta=beta, pairing=pairing, ignore_index=ignore_index).loss


@torch.no_grad()
def triplet_distances(embeddings: torch.Tensor, labels: torch.Tensor, image_ids: torch.Tensor,
                      subgroup_ids: torch.Tensor | None = None, *, pairing: str = "paper",
                      ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-triplet dis(+) and dis(-), each ``(T,)`` and detached, in mining order.

    For histograms of the distance distributions during training (the paper's Figure 4).
    """
    _check_embeddings(embeddings, labels)
    triplets = mine_triplets(labels, image_ids, subgroup_ids, pairing=pairing,
                             ignore_index=ignore_index)
    if triplets.shape[0] == 0:
        empty = embeddings.new_empty(0, dtype=torch.float32)
        return empty, empty.clone()
    return _mined_distances(embeddings, triplets)
