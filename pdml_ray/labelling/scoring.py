"""One image scored for the next clicks, in plain torch: the model's logits and embedding
map at the working resolution, the score of every pixel, and the image's candidates.

The score of a pixel is

    (1 - coverage_weight) * uncertainty + coverage_weight * coverage, times the discount
    near the image's existing clicks,

all at the working resolution (the photo scaled so that its shorter side is the model's
training crop side), where the model saw its training pixels. Coverage is computed on
the embedding map (output stride 8) and read at each pixel from the embedding cell that
holds it. Candidates come back in pixels of the original image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pdml_ray.data.transforms import to_model_input
from pdml_ray.inference import resize_image, working_shape
from pdml_ray.labels import IGNORE_INDEX
from pdml_ray.losses import sample_point_embeddings

from .candidates import Candidates, region_candidates
from .clicks import click_discount, to_grid
from .coverage import LabelledEmbeddings, embedding_coverage
from .uncertainty import UNCERTAINTIES

STRATEGIES = ("margin+coverage", "entropy+coverage", "margin", "entropy")


@dataclass(frozen=True)
class ScoringSettings:
    """How pixels are ranked. Distances are fractions of the working image's shorter
    side, so the same settings suit 96 px scenes and 500 px photos."""

    strategy: str = "margin+coverage"
    coverage_weight: float = 0.5  # of the score when the strategy uses coverage
    # The discount near a click is 0.39 at this distance. Kept short: it should only stop
    # a second click beside a first. At 0.08 of the side, with ~9 clicks in a 96 px scene,
    # it discounted most of the interior and sent half the suggestions within 8 px of
    # the edge (a quarter at 0.03, as many as uniform pixels would).
    click_radius: float = 0.03
    per_region: int = 3  # candidates per predicted region at most
    suppression_radius: float = 0.1  # between candidates of one region
    min_region_fraction: float = 0.002  # of the working image: smaller regions are specks
    # No suggestion this close to the image's edge: the network's zero padding inflates
    # its uncertainty there, which says little about what a click would teach.
    edge_margin: float = 0.03

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; expected one of "
                             f"{', '.join(STRATEGIES)}")
        if not 0 <= self.coverage_weight <= 1:
            raise ValueError(f"coverage_weight must lie in [0, 1], got {self.coverage_weight}")
        if self.per_region < 1:
            raise ValueError(f"per_region must be >= 1, got {self.per_region}")

    @property
    def uncertainty(self) -> str:
        return self.strategy.split("+")[0]

    @property
    def uses_coverage(self) -> bool:
        return self.strategy.endswith("+coverage")


def working_view(image: np.ndarray, short_side: int | None) -> np.ndarray:
    """The uint8 ``(h, w, 3)`` view the model scores: ``image`` scaled so that its
    shorter side is ``short_side``, never scaled up, exactly as ``jobs.predict`` scales
    photos (None: the image as it is)."""
    if short_side is None:
        return image
    shape = working_shape(*image.shape[:2], short_side)
    return image if shape == image.shape[:2] else resize_image(image, shape)


@torch.no_grad()
def forward(model: nn.Module, view: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits (C, h, w)`` and ``embed (D, h', w')`` of one uint8 view, on the CPU."""
    device = next(model.parameters()).device
    out = model(to_model_input(view)[None].to(device))
    return out["out"][0].float().cpu(), out["embed"][0].float().cpu()


def embeddings_at_clicks(embed: torch.Tensor, view_shape: tuple[int, int],
                         clicks: np.ndarray, image_shape: tuple[int, int]) -> LabelledEmbeddings:
    """Embeddings sampled (bilinearly, as training samples them) at an image's clicks.

    Args:
        embed: ``(D, h', w')`` embedding map of the working view.
        view_shape: ``(h, w)`` of the working view.
        clicks: ``(K, 3)`` rows ``(y, x, class_id)`` in pixels of the original image.
        image_shape: ``(H, W)`` of the original image.
    """
    clicks = np.asarray(clicks, dtype=np.int64).reshape(-1, 3)
    if not len(clicks):
        return LabelledEmbeddings.empty(embed.shape[0])
    grid = to_grid(clicks[:, :2], image_shape, view_shape)
    labels = torch.full((1, *view_shape), IGNORE_INDEX, dtype=torch.int64)
    # Two clicks that land in one working pixel keep one of them: a map holds one label.
    labels[0, grid[:, 0], grid[:, 1]] = torch.from_numpy(clicks[:, 2])
    embeddings, classes, _ = sample_point_embeddings(embed[None], labels)
    return LabelledEmbeddings(embeddings.detach(), classes)


def score_map(logits: torch.Tensor, embed: torch.Tensor, clicks_in_view: np.ndarray,
              labelled: LabelledEmbeddings, spacing: float,
              settings: ScoringSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The score of every pixel of the working view, and the predicted classes.

    Args:
        logits: ``(C, h, w)``.
        embed: ``(D, h', w')``; the cell holding pixel (y, x) is
            ``(floor((y + 0.5) h' / h), floor((x + 0.5) w' / w))``.
        clicks_in_view: ``(K, 2)`` pixels ``(y, x)`` of the view that hold clicks.
        labelled, spacing: the bank of labelled embeddings and its typical spacing
            (:func:`~pdml_ray.labelling.coverage.typical_spacing`).

    Returns:
        ``score float32 (h, w)`` in [0, 1] and ``predicted int64 (h, w)``.
    """
    height, width = logits.shape[1:]
    predicted = logits.argmax(dim=0)
    score = UNCERTAINTIES[settings.uncertainty](logits)
    if settings.uses_coverage:
        cell_y = torch.from_numpy(to_grid(np.stack([np.arange(height), np.zeros(height, int)], 1),
                                          (height, width), tuple(embed.shape[1:]))[:, 0])
        cell_x = torch.from_numpy(to_grid(np.stack([np.zeros(width, int), np.arange(width)], 1),
                                          (height, width), tuple(embed.shape[1:]))[:, 1])
        cell_embed = embed[:, cell_y][:, :, cell_x]  # (D, h, w): each pixel's cell
        coverage = embedding_coverage(cell_embed, predicted, labelled, spacing)
        weight = settings.coverage_weight
        score = (1 - weight) * score + weight * coverage
    radius = settings.click_radius * min(height, width)
    return score * click_discount((height, width), clicks_in_view, radius), predicted


def image_candidates(logits: torch.Tensor, embed: torch.Tensor, clicks: np.ndarray,
                     image_shape: tuple[int, int], labelled: LabelledEmbeddings, spacing: float,
                     settings: ScoringSettings) -> Candidates:
    """Candidates of one image in pixels of the original image (the pixel that holds the
    centre of the working pixel), with their scores and predicted classes.

    Args:
        logits, embed: the model's outputs on the working view.
        clicks: ``(K, 3)`` existing clicks ``(y, x, class_id)`` in original pixels.
        image_shape: ``(H, W)`` of the original image.
    """
    view_shape = tuple(logits.shape[1:])
    clicks = np.asarray(clicks, dtype=np.int64).reshape(-1, 3)
    clicks_in_view = to_grid(clicks[:, :2], image_shape, view_shape)
    score, predicted = score_map(logits, embed, clicks_in_view, labelled, spacing, settings)
    shorter = min(view_shape)
    margin = min(int(settings.edge_margin * shorter), (shorter - 1) // 2)
    inside = np.zeros(view_shape, dtype=bool)
    inside[margin:view_shape[0] - margin, margin:view_shape[1] - margin] = True
    found = region_candidates(score.numpy(), predicted.numpy(), per_region=settings.per_region,
                              suppression_radius=settings.suppression_radius * shorter,
                              min_region_pixels=max(1, round(settings.min_region_fraction
                                                             * view_shape[0] * view_shape[1])),
                              allowed=inside)
    original = to_grid(np.stack([found.y, found.x], axis=1), view_shape, image_shape)
    return Candidates(original[:, 0], original[:, 1], found.region, found.tier,
                      found.predicted_class, found.score)
