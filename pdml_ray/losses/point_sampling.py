"""Reading the embedding of every annotated point off the feature map."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdml_ray.labels import IGNORE_INDEX


def sample_point_embeddings(embed: torch.Tensor, point_labels: torch.Tensor,
                            ignore_index: int = IGNORE_INDEX
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinearly sample ``embed`` at every labelled pixel of ``point_labels``.

    Coordinates follow ``align_corners=False`` (the convention of ``F.interpolate`` when the
    model upsamples its logits): pixel (y, x) of an H x W image covers the square whose
    centre is (y + 0.5, x + 0.5), which lies at feature coordinate
    ``fy = (y + 0.5) * h / H - 0.5`` (and ``fx = (x + 0.5) * w / W - 0.5``) of an h x w map,
    feature cells being indexed by their centres. Coordinates beyond the outermost cell
    centres read the border cell (``padding_mode="border"``). With h = H the exact pixel is
    read. Sampling is differentiable, so gradients reach ``embed``.

    Args:
        embed: ``(B, D, h, w)`` feature map.
        point_labels: ``(B, H, W)`` class ids at points, ``ignore_index`` elsewhere.

    Returns:
        ``embeddings (N, D)``, ``labels (N,)`` long and ``batch_index (N,)`` long (the image
        of each point within the batch), points ordered by (batch, y, x) as ``nonzero`` gives.
    """
    if embed.dim() != 4 or point_labels.dim() != 3 or embed.shape[0] != point_labels.shape[0]:
        raise ValueError(f"expected embed (B, D, h, w) and point_labels (B, H, W) with the same B, "
                         f"got {tuple(embed.shape)} and {tuple(point_labels.shape)}")
    batch, height, width = point_labels.shape
    where = torch.nonzero(point_labels != ignore_index)
    batch_index, ys, xs = where.unbind(1)
    labels = point_labels[batch_index, ys, xs].long()
    # grid_sample's normalised coordinate of pixel centre x is (x + 0.5) / W * 2 - 1.
    grid_x = (xs.to(embed.dtype) + 0.5) * (2.0 / width) - 1.0
    grid_y = (ys.to(embed.dtype) + 0.5) * (2.0 / height) - 1.0
    # One grid row per image, padded to the largest point count of the batch.
    counts = torch.bincount(batch_index, minlength=batch)
    slot = torch.arange(where.shape[0], device=where.device) - torch.repeat_interleave(
        counts.cumsum(0) - counts, counts)
    max_points = int(counts.max()) if batch else 0
    grid = embed.new_zeros(batch, 1, max(max_points, 1), 2)
    grid[batch_index, 0, slot] = torch.stack([grid_x, grid_y], dim=1)
    sampled = F.grid_sample(embed, grid, mode="bilinear", padding_mode="border",
                            align_corners=False)  # (B, D, 1, max points)
    embeddings = sampled[batch_index, :, 0, slot]
    return embeddings, labels, batch_index
