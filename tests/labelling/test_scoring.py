"""One image scored: hand-made logits and embeddings through the score map, a fixed model
through the whole path to candidates in original pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pdml_ray.labelling.coverage import LabelledEmbeddings
from pdml_ray.labelling.scoring import (ScoringSettings, embeddings_at_clicks, forward,
                                        image_candidates, score_map, working_view)


def two_class_logits(p_class1: np.ndarray) -> torch.Tensor:
    p = torch.as_tensor(p_class1, dtype=torch.float32)
    return torch.stack([(1 - p).log(), p.log()])


def test_margin_score_without_coverage_or_clicks_is_the_margin_uncertainty():
    p = np.array([[0.5, 0.6, 0.9], [0.1, 0.45, 0.99]])
    score, predicted = score_map(two_class_logits(p), torch.zeros(4, 1, 1), np.zeros((0, 2)),
                                 LabelledEmbeddings.empty(4), 1.0,
                                 ScoringSettings(strategy="margin"))
    assert score.numpy() == pytest.approx(1 - np.abs(2 * p - 1), abs=1e-6)
    assert predicted.tolist() == [[0, 1, 1], [0, 0, 1]]  # ties (0.5) go to class 0


def test_coverage_mixes_in_by_its_weight_on_the_embedding_cell_under_each_pixel():
    # A 4x4 view over a 2x2 embedding map: cell (i, j) holds embedding (i, j) * 3.
    # Everything is class 0 and confident; the one labelled point sits at (0, 0).
    logits = torch.stack([torch.full((4, 4), 10.0), torch.zeros(4, 4)])
    embed = torch.tensor([[[0.0, 0.0], [3.0, 3.0]], [[0.0, 3.0], [0.0, 3.0]]])
    labelled = LabelledEmbeddings(torch.zeros(1, 2), torch.zeros(1, dtype=torch.int64))
    settings = ScoringSettings(strategy="margin+coverage", coverage_weight=0.5)
    score, _ = score_map(logits, embed, np.zeros((0, 2)), labelled, 3.0, settings)
    margin = 1 - math.tanh(5.0)  # 1 - (p1 - p2) for logits 10 and 0
    distances = np.array([[0, 3], [3, 3 * math.sqrt(2)]])
    cells = np.kron(distances / (distances + 3.0), np.ones((2, 2)))  # each cell covers 2x2 pixels
    assert score.numpy() == pytest.approx(0.5 * margin + 0.5 * cells, abs=1e-6)


def test_existing_clicks_discount_their_neighbourhood():
    logits = torch.zeros(2, 10, 10)  # maximally unsure everywhere: uncertainty 1
    settings = ScoringSettings(strategy="entropy", click_radius=0.2)  # 2 px on a 10 px side
    score, _ = score_map(logits, torch.zeros(1, 1, 1), np.array([[5, 5]]),
                         LabelledEmbeddings.empty(1), 1.0, settings)
    assert score[5, 5] == 0
    assert float(score[5, 8]) == pytest.approx(1 - math.exp(-9 / 8), abs=1e-6)


def test_embeddings_at_clicks_read_the_cell_under_a_pixel_on_the_training_grid():
    # an 8x8 view and a 2x2 map: pixel (1, 1) lies at feature coordinate (-0.125, -0.125),
    # inside the first cell's border zone: it reads cell (0, 0) exactly.
    embed = torch.arange(4.0).reshape(1, 2, 2)
    clicks = np.array([[2, 2, 3], [13, 13, 1]])  # in a 16x16 original: view pixels (1,1), (6,6)
    labelled = embeddings_at_clicks(embed, (8, 8), clicks, (16, 16))
    assert labelled.classes.tolist() == [3, 1]
    assert labelled.embeddings[:, 0].tolist() == pytest.approx([0.0, 3.0])


class FixedModel(nn.Module):
    """Class 1 is likely in the left half and class 0 in the right half; the top-left
    quarter is nearly a tie (logits 0.1 and 0). Embeddings: a 2x2 map."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        _, _, height, width = x.shape
        logits = torch.zeros(1, 2, height, width)
        logits[:, 1, :, : width // 2] = 3.0
        logits[:, 0, :, width // 2:] = 2.0
        logits[:, 1, : height // 2, : width // 2] = 0.1
        return {"out": logits, "embed": torch.arange(8.0).reshape(1, 2, 2, 2)}


def test_an_image_s_best_candidate_is_the_tie_region_in_original_pixels():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    view = working_view(image, 20)
    assert view.shape == (20, 30, 3)
    logits, embed = forward(FixedModel(), view)
    found = image_candidates(logits, embed, np.zeros((0, 3)), (40, 60),
                             LabelledEmbeddings.empty(2), 1.0,
                             ScoringSettings(strategy="margin", per_region=1, edge_margin=0.1))
    best = int(np.argmax(found.score))
    # the near-tie is rows 0-9, cols 0-14 of the view, all scoring 1 - tanh(0.05); its
    # first pixel in raster order outside the 2-pixel edge margin, view (2, 2), holds the
    # centre of original pixel (5, 5).
    assert (found.y[best], found.x[best], found.predicted_class[best]) == (5, 5, 1)
    assert found.score[best] == pytest.approx(1 - math.tanh(0.05), abs=1e-6)
    # one candidate per region: the left (class 1) and the right (class 0, 1 - tanh(1))
    assert sorted(found.predicted_class.tolist()) == [0, 1]
    assert found.score.min() == pytest.approx(1 - math.tanh(1.0), abs=1e-6)
    # view pixel (y, x) holds original pixel (2y + 1, 2x + 1)
    assert (found.y % 2 == 1).all() and (found.x % 2 == 1).all()


def test_unknown_strategy_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="unknown strategy 'random'.*margin\\+coverage"):
        ScoringSettings(strategy="random")
