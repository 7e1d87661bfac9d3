"""Paired training transforms that move an image, its dense mask and its points together.

A *sample* is a dict::

    image          float32 (3, H, W)   normalised image (see :func:`to_model_input`)
    mask           int64   (H, W)      dense class ids, 255 = ignore
    points         float64 (K, 2)      continuous (y, x) positions; pixel (i, j) spans
                                       [i, i+1) x [j, j+1), so a labelled pixel starts at
                                       its centre (i + 0.5, j + 0.5)
    point_classes  int64   (K,)        class id of each point

Points travel as coordinates (scaled, shifted by the crop, mirrored) and become a sparse
label map only at the end (:func:`rasterize_points`): resampling a sparse map would lose
points on down-scaling and duplicate them on up-scaling. Images are resampled bilinearly,
masks by nearest neighbour sampled at output pixel centres (the points' convention): on
up-scaling a point's new pixel copies the mask of its own source pixel; on down-scaling it
comes from a source pixel less than one output pixel away.

Random choices draw from the ``generator`` each call is given (the dataset seeds one per
sample, epoch and seed), or from torch's global RNG without one.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pdml_ray.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Sample = dict[str, torch.Tensor]


def to_model_input(image_uint8_hwc: np.ndarray) -> torch.Tensor:
    """``uint8 (H, W, 3)`` RGB -> ``float32 (3, H, W)``: scaled to [0, 1], then
    ImageNet-normalised per channel. Training and inference share this exact function."""
    image = np.asarray(image_uint8_hwc)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    # torch.tensor copies: arrays from PIL are read-only.
    tensor = torch.tensor(image).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def points_to_sample(points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, 3)`` integer rows ``(y, x, class_id)`` -> ``(points (K, 2) float64 pixel
    centres, point_classes (K,) int64)``, the sample fields."""
    points = np.asarray(points, dtype=np.int64).reshape(-1, 3)
    coords = torch.from_numpy(points[:, :2].astype(np.float64) + 0.5)
    return coords, torch.from_numpy(points[:, 2].copy())


def rasterize_points(points: torch.Tensor, point_classes: torch.Tensor, size: tuple[int, int],
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The sparse label map ``int64 (H, W)``: ``ignore_index`` except at the pixels that
    contain a point (``floor(y), floor(x)``), which carry its class. Points outside the
    map are dropped; where two land on one pixel the later row wins."""
    height, width = size
    label_map = torch.full((height, width), ignore_index, dtype=torch.int64)
    rows = torch.floor(points[:, 0]).long()
    cols = torch.floor(points[:, 1]).long()
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    pixels = (rows[inside] * width + cols[inside]).numpy()
    classes = point_classes[inside].long()
    # Tensor assignment with repeated indices is unordered: keep each pixel's last point.
    _, last_reversed = np.unique(pixels[::-1], return_index=True)
    keep = torch.from_numpy(len(pixels) - 1 - last_reversed)
    label_map.view(-1)[torch.from_numpy(pixels)[keep]] = classes[keep]
    return label_map


# -- functional ops: deterministic, parameters given ------------------------------------
def resize(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize to ``size = (H', W')``: image bilinear, mask nearest, points scaled."""
    height, width = sample["image"].shape[-2:]
    image = F.interpolate(sample["image"][None], size=size, mode="bilinear", align_corners=False)[0]
    # "nearest-exact" samples the source pixel under each output pixel's centre: the same
    # centre convention the point coordinates use.
    mask = F.interpolate(sample["mask"][None, None].float(), size=size, mode="nearest-exact")[0, 0]
    # Multiply before dividing: a pixel centre (half-integer) times an integer size is
    # exact, so a point that falls exactly on a pixel edge is not nudged across it.
    new_size = torch.tensor(size, dtype=torch.float64)
    old_size = torch.tensor([height, width], dtype=torch.float64)
    return {**sample, "image": image, "mask": mask.long(),
            "points": sample["points"] * new_size / old_size}


def pad(sample: Sample, min_size: tuple[int, int], ignore_index: int = IGNORE_INDEX) -> Sample:
    """Pad bottom and right up to at least ``min_size``: image with 0 (the mean after
    normalisation), mask with ``ignore_index``. Points keep their coordinates."""
    height, width = sample["image"].shape[-2:]
    pad_h, pad_w = max(min_size[0] - height, 0), max(min_size[1] - width, 0)
    if pad_h == 0 and pad_w == 0:
        return sample
    return {**sample,
            "image": F.pad(sample["image"], (0, pad_w, 0, pad_h), value=0.0),
            "mask": F.pad(sample["mask"], (0, pad_w, 0, pad_h), value=ignore_index)}


def crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """Cut the window ``[top, top+height) x [left, left+width)`` (it must lie inside)."""
    offset = torch.tensor([top, left], dtype=torch.float64)
    return {**sample,
            "image": sample["image"][:, top:top + height, left:left + width],
            "mask": sample["mask"][top:top + height, left:left + width],
            "points": sample["points"] - offset}


def hflip(sample: Sample) -> Sample:
    """Mirror left-right: a point at x moves to W - x, so a point in pixel column j ends
    up in column W-1-j. One exactly on a pixel's left edge (x = j) would land on the right
    edge of W-1-j, which belongs to the next pixel: it is kept at W-1-j's left edge."""
    width = sample["image"].shape[-1]
    points = sample["points"].clone()
    x = points[:, 1]
    column = torch.floor(x)
    points[:, 1] = torch.where(x == column, width - 1 - column, width - x)
    return {**sample, "image": sample["image"].flip(-1), "mask": sample["mask"].flip(-1),
            "points": points}


# -- random transforms (torchvision references style) ---------------------------------
class RandomScale:
    """Resize by a factor drawn uniformly from ``[scale_min, scale_max]``."""

    def __init__(self, scale_min: float, scale_max: float) -> None:
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
        self.scale_min, self.scale_max = scale_min, scale_max

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        factor = (self.scale_min
                  + (self.scale_max - self.scale_min) * torch.rand((), generator=generator).item())
        height, width = sample["image"].shape[-2:]
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        return resize(sample, size) if size != (height, width) else sample


class RandomCrop:
    """Pad to at least ``size`` x ``size`` if needed, then cut a random square window."""

    def __init__(self, size: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.size = size
        self.ignore_index = ignore_index

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        sample = pad(sample, (self.size, self.size), self.ignore_index)
        height, width = sample["image"].shape[-2:]
        top = int(torch.randint(0, height - self.size + 1, (), generator=generator).item())
        left = int(torch.randint(0, width - self.size + 1, (), generator=generator).item())
        return crop(sample, top, left, self.size, self.size)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return hflip(sample) if torch.rand((), generator=generator).item() < self.p else sample


class Compose:
    def __init__(self, transforms: Sequence[Callable[..., Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, generator=generator)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def train_transform(*, crop_size: int, scale_min: float = 0.5, scale_max: float = 1.5,
                    hflip: bool = True) -> Compose:
    """The paired training transform: random scale, random crop (padded), optional flip."""
    steps: list[Callable[..., Sample]] = [RandomScale(scale_min, scale_max),
                                               RandomCrop(crop_size)]
    if hflip:
        steps.append(RandomHorizontalFlip())
    return Compose(steps)
