"""Bilinear sampling of point embeddings: the coordinate convention and gradients."""

from __future__ import annotations

import pytest
import torch

from pdml_ray.losses import sample_point_embeddings

IGNORE = 255


def linear_embed(batch: int, h: int, w: int) -> torch.Tensor:
    """Channel 0 = row coordinate, channel 1 = column coordinate, channel 2 = 3 + batch."""
    rows = torch.arange(h, dtype=torch.float64).view(h, 1).expand(h, w)
    cols = torch.arange(w, dtype=torch.float64).view(1, w).expand(h, w)
    return torch.stack([torch.stack([rows, cols, torch.full((h, w), 3.0 + b)])
                        for b in range(batch)])


def test_linear_embed_gives_the_closed_form_coordinates():
    H, W, h, w = 33, 47, 5, 6  # the feature map of a stride-8 network on 33 x 47
    labels = torch.full((2, H, W), IGNORE)
    points = [(0, 10, 20, 1), (0, 3, 40, 0), (1, 17, 9, 2), (1, 25, 30, 7)]  # b, y, x, class
    for b, y, x, c in points:
        labels[b, y, x] = c
    embeddings, got_labels, batch_index = sample_point_embeddings(linear_embed(2, h, w), labels)
    assert embeddings.shape == (4, 3)
    # nonzero order: (batch, y, x)
    order = sorted(points)
    assert got_labels.tolist() == [c for *_, c in order]
    assert batch_index.tolist() == [b for b, *_ in order]
    for row, (b, y, x, _) in zip(embeddings.tolist(), order):
        fy = min(max((y + 0.5) * h / H - 0.5, 0.0), h - 1)  # border cells clamp
        fx = min(max((x + 0.5) * w / W - 0.5, 0.0), w - 1)
        assert row == pytest.approx([fy, fx, 3.0 + b])


def test_full_resolution_reads_exact_pixels():
    g = torch.Generator().manual_seed(1)
    embed = torch.randn(3, 4, 9, 11, generator=g)
    labels = torch.full((3, 9, 11), IGNORE)
    labels[0, 0, 0] = labels[1, 8, 10] = labels[2, 4, 5] = labels[2, 4, 7] = 1
    embeddings, _, batch_index = sample_point_embeddings(embed, labels)
    where = torch.nonzero(labels != IGNORE)
    expected = embed[where[:, 0], :, where[:, 1], where[:, 2]]
    assert torch.allclose(embeddings, expected, atol=1e-6)
    assert batch_index.tolist() == [0, 1, 2, 2]


def test_gradients_reach_the_feature_map():
    embed = torch.zeros(2, 3, 4, 4, requires_grad=True)
    labels = torch.full((2, 8, 8), IGNORE)
    labels[1, 2, 6] = 0  # maps to feature coordinate (0.75, 2.75): four cells share it
    embeddings, _, _ = sample_point_embeddings(embed, labels)
    embeddings.sum().backward()
    grad = embed.grad[1, 0]
    assert torch.allclose(grad[0:2, 2:4], torch.tensor([[0.0625, 0.1875], [0.1875, 0.5625]]))
    assert grad.sum().item() == pytest.approx(1.0)
    assert embed.grad[0].abs().sum() == 0


def test_no_points():
    embeddings, labels, batch_index = sample_point_embeddings(torch.randn(2, 5, 3, 3),
                                                              torch.full((2, 12, 12), IGNORE))
    assert embeddings.shape == (0, 5) and labels.shape == (0,) and batch_index.shape == (0,)
