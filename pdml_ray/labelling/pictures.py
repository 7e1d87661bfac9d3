"""Pictures of a suggestion round: an image with its suggestions numbered, and the
histogram of scores (Pillow and matplotlib's object-oriented API; no Ray, no MLflow)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

MIN_SIDE = 384  # small images are enlarged (nearest) so numbers stay legible


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def suggestion_overlay(image: np.ndarray, marks: Sequence[tuple[int, int, int, str]],
                       colors: Mapping[str, Sequence[int]], *,
                       min_side: int = MIN_SIDE) -> Image.Image:
    """The image with a dot in the suggested class's colour at each suggestion and its
    number beside it.

    Args:
        image: uint8 ``(H, W, 3)``.
        marks: ``(number, y, x, suggested class)`` per suggestion, pixels of ``image``;
            the number is its rank in the round (1 = picked first).
        colors: RGB of each class name.
        min_side: images whose shorter side is smaller are enlarged by a whole factor.
    """
    height, width = image.shape[:2]
    factor = max(1, -(-min_side // min(height, width)))
    picture = Image.fromarray(image).resize((width * factor, height * factor), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    radius = max(4, min(picture.size) // 45)
    font = _font(max(12, radius * 3))
    for number, y, x, name in marks:
        cy, cx = (y + 0.5) * factor, (x + 0.5) * factor
        fill = tuple(int(c) for c in colors.get(name, (255, 255, 255)))
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill,
                     outline=(255, 255, 255), width=max(1, radius // 3))
        text = str(number)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx = min(cx + radius + 2, picture.width - (right - left) - 2)
        ty = min(max(cy - (bottom - top) / 2 - top, 0), picture.height - bottom - 2)
        draw.rectangle((tx - 2, ty + top - 2, tx + right - left + 2, ty + bottom + 2),
                       fill=(0, 0, 0))
        draw.text((tx - left, ty), text, fill=(255, 255, 255), font=font)
    return picture


def score_histogram(candidate_scores: np.ndarray, picked_scores: np.ndarray, *,
                    bins: int = 40) -> Figure:
    """Histogram of every candidate's score with the suggested ones on top: where the
    budget cut the ranking, and how much it left above the cut."""
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    edges = np.linspace(0.0, 1.0, bins + 1)
    axes.hist(np.asarray(candidate_scores), bins=edges, color="#bbbbbb", label="candidates")
    axes.hist(np.asarray(picked_scores), bins=edges, color="#d62728", label="suggested")
    axes.set_xlabel("score")
    axes.set_ylabel("pixels")
    axes.set_title(f"{len(picked_scores)} suggested of {len(candidate_scores)} candidates")
    axes.legend()
    figure.tight_layout()
    return figure
