from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdml_ray.data import IMAGENET_MEAN, IMAGENET_STD, pad_collate, rasterize_points, to_model_input
from pdml_ray.data.transforms import (Compose, RandomCrop, RandomHorizontalFlip, RandomScale, crop,
                                      hflip, pad, points_to_sample, resize, train_transform)

IGNORE = 255


def coordinate_sample(height: int, width: int, points: np.ndarray) -> dict[str, torch.Tensor]:
    """Image channels 0/1 hold each pixel's row/column; the mask holds ``row * W + col``
    (below 255 for the sizes used), so after a transform both say where a pixel came from."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    image = torch.from_numpy(np.stack([rows, cols, np.zeros_like(rows)]))
    mask = torch.arange(height * width, dtype=torch.int64).view(height, width)
    coords, classes = points_to_sample(points)
    return {"image": image, "mask": mask, "points": coords, "point_classes": classes}


def random_points(rng: np.random.Generator, height: int, width: int, count: int) -> np.ndarray:
    flat = rng.choice(height * width, size=count, replace=False)
    return np.stack([flat // width, flat % width, rng.integers(0, 20, count)], axis=1)


def test_to_model_input_is_imagenet_normalisation():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = to_model_input(image)
    assert out.dtype == torch.float32 and out.shape == (3, 5, 7)
    expected = (image.astype(np.float64) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(image.astype(np.float32))


def test_rasterize_without_transform_puts_points_on_their_pixels():
    points = np.array([[0, 0, 3], [4, 2, 7], [1, 5, 0]])
    coords, classes = points_to_sample(points)
    label_map = rasterize_points(coords, classes, (5, 6))
    expected = torch.full((5, 6), IGNORE)
    for y, x, c in points:
        expected[y, x] = c
    assert torch.equal(label_map, expected)


@pytest.mark.parametrize("trial", range(12))
def test_functional_ops_place_every_point_where_an_independent_formula_says(trial):
    """Random scale, crop (with padding when small) and flip against the closed form
    ``row = floor((y + 0.5) * H'/H) - top`` and the mirror ``col -> W' - 1 - col``."""
    rng = np.random.default_rng(trial)
    height, width = rng.integers(10, 40, 2)
    points = random_points(rng, height, width, 25)
    new_h, new_w = (max(1, round(n * rng.uniform(0.4, 2.0))) for n in (height, width))
    size = int(rng.integers(8, 48))
    flip = bool(rng.integers(2))

    sample = resize(coordinate_sample(height, width, points), (new_h, new_w))
    sample = pad(sample, (size, size))
    top = int(rng.integers(0, max(new_h, size) - size + 1))
    left = int(rng.integers(0, max(new_w, size) - size + 1))
    sample = crop(sample, top, left, size, size)
    if flip:
        sample = hflip(sample)
    label_map = rasterize_points(sample["points"], sample["point_classes"], (size, size))

    expected = np.full((size, size), IGNORE)
    for y, x, cls in points:  # in row order: a later point wins a shared pixel
        row = math.floor((y + 0.5) * new_h / height) - top
        col = math.floor((x + 0.5) * new_w / width) - left
        if flip:
            col = size - 1 - col
        if 0 <= row < size and 0 <= col < size:
            expected[row, col] = cls
    np.testing.assert_array_equal(label_map.numpy(), expected)


def assert_aligned(sample: dict[str, torch.Tensor], width: int, point_tolerance: float,
                   points: np.ndarray, label_map: torch.Tensor) -> None:
    image, mask = sample["image"], sample["mask"]
    labelled = mask != IGNORE
    src_row, src_col = mask[labelled] // width, mask[labelled] % width
    # The nearest mask pixel and the bilinear image sample come from the same place.
    assert (image[0][labelled] - src_row).abs().max() <= 0.5 + 1e-4
    assert (image[1][labelled] - src_col).abs().max() <= 0.5 + 1e-4
    # Padding: image 0, mask ignore.
    assert (image[:, ~labelled] == 0).all()
    # Each point lands where the image says its pixel went (classes are point indices).
    for row, col in torch.nonzero(label_map != IGNORE).tolist():
        y, x, _ = points[label_map[row, col]]
        assert abs(image[0, row, col] - y) <= point_tolerance
        assert abs(image[1, row, col] - x) <= point_tolerance


@pytest.mark.parametrize("seed", range(8))
def test_random_train_transform_keeps_image_mask_and_points_aligned(seed):
    torch.manual_seed(seed)
    height, width = 15, 16  # mask ids row * 16 + col stay below 255
    rng = np.random.default_rng(seed)
    points = random_points(rng, height, width, 40)
    points[:, 2] = np.arange(len(points))  # class = index, to look each point up
    scale_min = 0.5
    transform = train_transform(crop_size=12, scale_min=scale_min, scale_max=2.0, hflip=True)
    sample = transform(coordinate_sample(height, width, points))
    assert sample["image"].shape == (3, 12, 12) and sample["mask"].shape == (12, 12)
    label_map = rasterize_points(sample["points"], sample["point_classes"], (12, 12))
    # A point is at most half an output pixel, 0.5 / scale source pixels, from its pixel's centre.
    assert_aligned(sample, width, 0.5 / scale_min + 1e-4, points, label_map)


def test_random_transforms_follow_torch_seed():
    points = random_points(np.random.default_rng(0), 20, 20, 10)
    transform = Compose([RandomScale(0.5, 1.5), RandomCrop(16), RandomHorizontalFlip()])
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(transform(coordinate_sample(20, 20, points)))
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key])


def test_flip_probability_and_scale_range():
    sample = coordinate_sample(4, 6, np.array([[1, 1, 0]]))
    assert torch.equal(RandomHorizontalFlip(p=1.0)(sample)["image"], sample["image"].flip(-1))
    assert RandomHorizontalFlip(p=0.0)(sample) is sample
    assert RandomScale(1.0, 1.0)(sample) is sample
    with pytest.raises(ValueError):
        RandomScale(2.0, 1.0)


def test_pad_collate_pads_images_with_zero_and_labels_with_ignore():
    batch = [{"image": torch.ones(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.int64),
              "image_index": torch.tensor(0)},
             {"image": torch.ones(3, 6, 3), "mask": torch.zeros(6, 3, dtype=torch.int64),
              "image_index": torch.tensor(1)}]
    out = pad_collate(batch)
    assert out["image"].shape == (2, 3, 6, 5) and out["mask"].shape == (2, 6, 5)
    assert (out["image"][0, :, 4:] == 0).all() and (out["image"][1, :, :, 3:] == 0).all()
    assert (out["mask"][0, 4:] == IGNORE).all() and (out["mask"][1, :, 3:] == IGNORE).all()
    assert (out["mask"][0, :4, :5] == 0).all() and out["image_index"].tolist() == [0, 1]
