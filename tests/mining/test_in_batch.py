"""In-batch mining: Algorithm 1 within subgroups of consecutive images of one batch,
checked against the slow reference written from the paper."""

from __future__ import annotations

import pytest
import torch

from pdml_ray.config import LossConfig
from pdml_ray.mining import InBatchMiner, PointBatch
from tests.losses.test_pdml_reference import algorithm1, loss_reference


def batch(seed: int, images: int = 4, per_image: int = 5) -> PointBatch:
    g = torch.Generator().manual_seed(seed)
    position = torch.arange(images).repeat_interleave(per_image)
    return PointBatch(embeddings=torch.randn(len(position), 6, generator=g),
                      labels=torch.randint(0, 3, (len(position),), generator=g),
                      image_ids=position * 7 + 100,  # global ids, not positions
                      batch_index=position)


@pytest.mark.parametrize("subgroup_size", [2, 4])
@pytest.mark.parametrize("pairing", ["paper", "all"])
def test_loss_is_algorithm1_over_subgroups_of_consecutive_images(subgroup_size, pairing):
    cfg = LossConfig(margin=3.0, alpha=0.8, beta=1.0, subgroup_size=subgroup_size,
                     pairing=pairing)
    points = batch(seed=subgroup_size)
    terms = InBatchMiner(cfg)(points, step=0)
    triplets = algorithm1(points.labels, points.image_ids,
                          points.batch_index // subgroup_size, pairing)
    assert len(triplets) > 0
    expected = loss_reference(points.embeddings, triplets, 3.0, 0.8, 1.0)
    assert terms.loss.item() == pytest.approx(expected, rel=1e-5)


def test_images_of_other_subgroups_never_pair():
    """Moving the second subgroup's embeddings anywhere leaves the first subgroup's
    triplets, and so a batch made of the first subgroup alone, as they were."""
    cfg = LossConfig(margin=3.0, subgroup_size=2)
    points = batch(seed=1)
    first = points.batch_index < 2
    alone = InBatchMiner(cfg)(PointBatch(points.embeddings[first], points.labels[first],
                                         points.image_ids[first], points.batch_index[first]),
                              step=0)
    moved = points.embeddings.clone()
    moved[~first] += 1000.0
    both = InBatchMiner(cfg)(PointBatch(moved, points.labels, points.image_ids,
                                        points.batch_index), step=0)
    second = InBatchMiner(cfg)(PointBatch(moved[~first], points.labels[~first],
                                          points.image_ids[~first],
                                          points.batch_index[~first] - 2), step=0)
    # The batch's loss is the triplet-weighted mean of its two subgroups' losses.
    n1, n2 = alone.num_triplets, second.num_triplets
    assert both.loss.item() == pytest.approx(
        (alone.loss.item() * n1 + second.loss.item() * n2) / (n1 + n2), rel=1e-5)
