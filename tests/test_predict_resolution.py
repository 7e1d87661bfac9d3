"""Prediction at a working resolution: large photos are scaled so that their shorter side
is the model's training crop side, predicted there and the class map scaled back; the
full-resolution option predicts every pixel as before."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pdml_ray.config import Config
from pdml_ray.data import to_model_input
from pdml_ray.inference import SceneParser, resize_nearest, working_shape
from pdml_ray.service.predict import render

NUM_CLASSES = 8  # the synthetic dataset of the default config


class SmallModel(nn.Module):
    """Two 3x3 convolutions: class maps with structure at every scale of a random photo."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, NUM_CLASSES, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv2(torch.relu(self.conv1(x)))}


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random photo (upsampled noise), so that scaling it keeps its content."""
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3),
                                                  dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def model_argmax(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """One forward pass over the whole image: the class map as predicted before working
    resolutions existed, written without SceneParser."""
    with torch.no_grad():
        return model(to_model_input(image)[None])["out"][0].argmax(0).numpy()


def nearest_up(classes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """torch's pixel-centre nearest neighbour, an independent reference."""
    tensor = torch.from_numpy(classes)[None, None].float()
    return F.interpolate(tensor, size=shape, mode="nearest-exact")[0, 0].long().numpy()


@pytest.fixture
def parser():
    return SceneParser(SmallModel(), Config())  # data.crop_size 96: the working size


@pytest.mark.parametrize("height, width, side, expected", [
    (4000, 6000, 321, (321, 482)),  # 6000 * 321 / 4000 = 481.5
    (6000, 4000, 321, (482, 321)),  # portrait: the width is the shorter side
    (2000, 3000, 96, (96, 144)),
    (1000, 4000, 96, (96, 384)),  # a panorama keeps its height, not its pixel count
    (50, 80, 96, (50, 80)),  # smaller photos are not scaled up
    (96, 500, 96, (96, 500)),
])
def test_working_shape_scales_the_shorter_side(height, width, side, expected):
    assert working_shape(height, width, side) == expected


@pytest.mark.parametrize("shape, out", [((96, 144), (2000, 3000)), ((7, 5), (23, 17)),
                                        ((3, 4), (300, 401)), ((10, 10), (10, 10))])
def test_nearest_resize_matches_torch_nearest_exact(shape, out):
    classes = np.random.default_rng(1).integers(0, NUM_CLASSES, shape)
    np.testing.assert_array_equal(resize_nearest(classes, out), nearest_up(classes, out))


def test_working_resolution_is_the_prediction_at_the_working_size_upsampled(parser):
    image = photo(300, 420)
    assert parser.working_size == 96
    classes = parser.predict(image, resolution=parser.working_size)
    assert classes.shape == (300, 420) and classes.dtype == np.int64
    # Independent reference: Pillow's bilinear shrink to a shorter side of 96 (420 * 96 /
    # 300 = 134.4), one forward pass there, torch's nearest neighbour back up.
    small = np.asarray(Image.fromarray(image).resize((134, 96), Image.BILINEAR))
    expected = nearest_up(model_argmax(parser.model, small), (300, 420))
    np.testing.assert_array_equal(classes, expected)
    assert len(np.unique(classes)) > 1  # a real map, not one class everywhere
    # It is not the full-resolution map: scaling changed what the model saw.
    assert (classes != model_argmax(parser.model, image)).any()


def test_working_resolution_tiles_a_view_still_larger_than_a_tile(parser):
    image = photo(200, 500)  # working view 96 x 240: three 96 px windows across
    seen = []
    tiled = parser.predict(image, resolution=96, tile=96, overlap=0.5,
                           progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (seen[-1][1], seen[-1][1])  # counted to the end
    assert all(total == seen[0][1] > 1 for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    small = np.asarray(Image.fromarray(image).resize((240, 96), Image.BILINEAR))
    with torch.no_grad():
        whole = parser.probabilities(small).argmax(0).numpy()
    # 48 px of overlap leave 24 px of context, more than the model's radius of 2.
    np.testing.assert_array_equal(tiled, nearest_up(whole, (200, 500)))


def test_a_photo_predicted_in_one_window_reports_progress_within_the_pass(parser):
    seen = []
    parser.predict(photo(200, 300), resolution=96, progress=lambda *args: seen.append(args))
    assert {total for _, total in seen} == {1} and seen[-1] == (1, 1)
    assert 0 < seen[0][0] < 1 and [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_full_resolution_is_the_exact_prediction_of_every_pixel(parser):
    image = photo(150, 230)
    expected = model_argmax(parser.model, image)
    np.testing.assert_array_equal(parser.predict(image), expected)  # the default: as given
    np.testing.assert_array_equal(parser.predict(image, resolution=None), expected)
    # A photo no larger than the working size is predicted as given either way.
    small = photo(90, 120)
    np.testing.assert_array_equal(parser.predict(small, resolution=96),
                                  model_argmax(parser.model, small))
    with pytest.raises(ValueError, match="resolution must be a positive number of pixels"):
        parser.predict(image, resolution=0)


def png_classes(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img).astype(np.int64)


def test_prediction_files_use_the_working_resolution_unless_asked_for_full(parser):
    image = photo(240, 360)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    classes_png, overlay_png, present = render(parser, buffer.getvalue())
    small = np.asarray(Image.fromarray(image).resize((144, 96), Image.BILINEAR))
    working = nearest_up(model_argmax(parser.model, small), (240, 360))
    np.testing.assert_array_equal(png_classes(classes_png), working)
    assert present == tuple(np.unique(working))
    with Image.open(io.BytesIO(overlay_png)) as overlay:
        assert overlay.height >= 240 and overlay.width >= 360  # the photo's size (and a legend)

    full_png, _, _ = render(parser, buffer.getvalue(), options={"resolution": None})
    np.testing.assert_array_equal(png_classes(full_png), model_argmax(parser.model, image))
