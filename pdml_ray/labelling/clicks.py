"""Less near the clicks an image already has: a second click beside a first one teaches
the model little it did not learn from the first."""

from __future__ import annotations

import numpy as np
import torch


def to_grid(points_yx: np.ndarray, source: tuple[int, int], target: tuple[int, int]) -> np.ndarray:
    """Pixel rows ``(y, x)`` of a ``source`` (H, W) image -> the pixels of a ``target``
    (h, w) grid that hold their centres: ``floor((y + 0.5) * h / H)`` (and the same for x).

    Returns ``int64 (K, 2)``.
    """
    points = np.asarray(points_yx, dtype=np.int64).reshape(-1, 2)
    scale = np.asarray(target, dtype=np.float64) / np.asarray(source, dtype=np.float64)
    grid = np.floor((points + 0.5) * scale).astype(np.int64)
    return np.minimum(grid, np.asarray(target) - 1)


def click_discount(shape: tuple[int, int], clicks_yx: np.ndarray, radius: float) -> torch.Tensor:
    """``1 - exp(-d^2 / (2 radius^2))`` per pixel, d the distance in pixels to the nearest
    click: 0 on a click, 0.39 at ``radius``, above 0.99 beyond three radii; 1 everywhere
    when there is no click.

    Args:
        shape: ``(h, w)`` of the grid.
        clicks_yx: ``(K, 2)`` pixel rows ``(y, x)`` in that grid.
        radius: in pixels of the grid, > 0.

    Returns:
        ``float32 (h, w)`` in [0, 1].
    """
    if not radius > 0:
        raise ValueError(f"radius must be > 0 pixels, got {radius}")
    clicks = torch.as_tensor(np.asarray(clicks_yx, dtype=np.float32).reshape(-1, 2))
    if not len(clicks):
        return torch.ones(shape)
    ys, xs = torch.meshgrid(torch.arange(shape[0], dtype=torch.float32),
                            torch.arange(shape[1], dtype=torch.float32), indexing="ij")
    pixels = torch.stack([ys.flatten(), xs.flatten()], dim=1)
    nearest = torch.cdist(pixels, clicks).min(dim=1).values
    return (1.0 - torch.exp(-nearest.square() / (2 * radius ** 2))).reshape(shape)
