"""SceneParser: sliding windows and test-time augmentation against whole-image inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pdml_ray.config import Config
from pdml_ray.inference import SceneParser, owned_ranges, window_starts
from pdml_ray.models import build_model

NUM_CLASSES = 8  # the synthetic dataset of the default config


class LocalModel(nn.Module):
    """Two 3x3 convolutions: each output pixel sees a 5x5 neighbourhood (radius 2), and
    zero padding makes every position, even near a border, depend on that alone."""

    def __init__(self, *, mirror_symmetric: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, NUM_CLASSES, 3, padding=1)
        if mirror_symmetric:  # kernels equal to their left-right mirror: flip-equivariant
            with torch.no_grad():
                for conv in (self.conv1, self.conv2):
                    conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv2(torch.relu(self.conv1(x)))}


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("length, tile, overlap", [(37, 16, 0.5), (100, 32, 1 / 3), (17, 16, 0.0),
                                                   (16, 16, 0.5), (5, 16, 0.25), (64, 9, 0.9)])
def test_windows_cover_the_axis_with_the_requested_overlap(length, tile, overlap):
    starts = window_starts(length, tile, overlap)
    side = min(tile, length)
    assert starts[0] == 0 and starts[-1] + side == length
    shared = [a + side - b for a, b in zip(starts[:-1], starts[1:])]
    assert all(s >= min(np.ceil(overlap * tile), tile - 1) for s in shared), shared
    spans = owned_ranges(starts, side, length)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(end == begin for (_, end), (begin, _) in zip(spans[:-1], spans[1:]))
    for start, (begin, end) in zip(starts, spans):  # a window only hands out its own pixels
        assert start <= begin < end <= start + side


@pytest.mark.parametrize("size", [(37, 53), (16, 40), (50, 17)])
def test_tiled_probabilities_equal_whole_image_for_a_local_model(size):
    parser = SceneParser(LocalModel(), Config())
    image = random_image(*size)
    # 8 px of overlap leave 4 px of context around every owned pixel: more than radius 2.
    tiled = parser.probabilities(image, tile=16, overlap=0.5)
    torch.testing.assert_close(tiled, parser.probabilities(image), rtol=0, atol=1e-6)


def test_windows_without_overlap_show_seams():
    parser = SceneParser(LocalModel(), Config())
    image = random_image(32, 48)  # tiles of 16 fit exactly: no overlap at all
    seams = parser.probabilities(image, tile=16, overlap=0.0) - parser.probabilities(image)
    assert seams[:, :, 14:18].abs().max() > 1e-3  # the zero padding shows at x = 16
    torch.testing.assert_close(seams[:, 2:14, 2:14], torch.zeros(8, 12, 12), rtol=0, atol=1e-6)


def test_a_tile_covering_the_image_is_whole_image_inference():
    parser = SceneParser(build_model(num_classes=NUM_CLASSES, backbone="resnet18"), Config())
    image = random_image(41, 29)
    whole = parser.probabilities(image)
    torch.testing.assert_close(parser.probabilities(image, tile=41), whole, rtol=0, atol=0)
    assert np.array_equal(parser.predict(image, tile=64), parser.predict(image))


def test_flip_of_a_mirror_symmetric_model_changes_nothing():
    parser = SceneParser(LocalModel(mirror_symmetric=True), Config())
    image = random_image(23, 31)
    torch.testing.assert_close(parser.probabilities(image, flip=True), parser.probabilities(image),
                               rtol=0, atol=1e-6)
    asymmetric = SceneParser(LocalModel(), Config())  # the check has teeth
    assert not torch.allclose(asymmetric.probabilities(image, flip=True),
                              asymmetric.probabilities(image), atol=1e-4)


def test_flip_averages_the_mirrored_prediction():
    parser = SceneParser(LocalModel(seed=3), Config())
    image = random_image(19, 27, seed=1)
    mirrored = parser.probabilities(np.ascontiguousarray(image[:, ::-1])).flip(-1)
    expected = (parser.probabilities(image) + mirrored) / 2
    torch.testing.assert_close(parser.probabilities(image, flip=True), expected)


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (33, 17), (65, 97)])
def test_odd_sizes_keep_their_shape_under_every_option(size):
    parser = SceneParser(LocalModel(), Config())
    image = random_image(*size)
    probs = parser.probabilities(image, tile=24, overlap=0.25, scales=(0.75, 1.0, 1.25), flip=True)
    assert probs.shape == (NUM_CLASSES, *size)
    torch.testing.assert_close(probs.sum(0), torch.ones(size))


@pytest.mark.parametrize("size", [(7, 3), (45, 29)])
def test_odd_sizes_through_the_strided_network(size):
    # Output stride 8 and a bilinear upsampling to the input size: odd sizes round-trip.
    model = build_model(num_classes=NUM_CLASSES, backbone="resnet18", head="linear")
    pred = SceneParser(model, Config()).predict(random_image(*size), tile=24, scales=(0.5, 1.0),
                                                flip=True)
    assert pred.shape == size and pred.dtype == np.int64
    assert 0 <= pred.min() and pred.max() < NUM_CLASSES


def test_predict_takes_a_batch_or_one_image_and_rejects_other_input():
    parser = SceneParser(LocalModel(), Config())
    batch = np.stack([random_image(12, 14, seed) for seed in range(3)])
    preds = parser.predict(batch, tile=8)
    assert preds.shape == (3, 12, 14)
    assert np.array_equal(preds[1], parser.predict(batch[1], tile=8))
    with pytest.raises(ValueError, match="uint8"):
        parser.predict(batch.astype(np.float32))
    with pytest.raises(ValueError, match="scales"):
        parser.predict(batch[0], scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="overlap"):
        parser.predict(batch[0], tile=8, overlap=1.0)


def test_single_scale_is_unchanged_by_the_options_that_do_nothing():
    parser = SceneParser(LocalModel(), Config())
    image = random_image(20, 30)
    torch.testing.assert_close(parser.probabilities(image, scales=(1.0,), tile=None),
                               parser.probabilities(image), rtol=0, atol=0)
    twice = parser.probabilities(image, scales=(1.0, 1.0))
    torch.testing.assert_close(twice, parser.probabilities(image))


# -- progress within an image -----------------------------------------------------------
def test_one_window_reports_its_progress_as_the_convolutions_run():
    """A large photo at full resolution is one forward pass: its progress moves on as the
    network's convolutions finish, each by its share of the pass's multiply-adds (conv1:
    3 in, 6 out; conv2: 6 in, 8 out; 3x3 kernels, one output pixel each per input pixel),
    and ends on the whole window."""
    parser = SceneParser(LocalModel(), Config())
    image = random_image(40, 56)
    seen = []
    classes = parser.predict(image, progress=lambda done, total: seen.append((done, total)))
    conv1, conv2 = 3 * 6 * 9, 6 * NUM_CLASSES * 9
    assert parser.conv_shares() == pytest.approx((conv1 / (conv1 + conv2),
                                                  conv2 / (conv1 + conv2)))
    assert seen == [(pytest.approx(conv1 / (conv1 + conv2)), 1), (1, 1)]
    np.testing.assert_array_equal(classes, parser.predict(image))  # hooks change nothing


def test_progress_of_windows_moves_within_each_pass_and_counts_every_window():
    """Several windows (four per pass), both mirrors: ``done`` rises through fractions of
    each pass, never goes back, and ends exactly on the number of windows."""
    parser = SceneParser(LocalModel(), Config())
    seen = []
    parser.probabilities(random_image(37, 53), tile=16, overlap=0.5, flip=True,
                         progress=lambda done, total: seen.append((done, total)))
    totals = {total for _, total in seen}
    assert len(totals) == 1 and totals.pop() == 2 * 4 * 6  # 4 rows x 6 columns, mirrored
    dones = [done for done, _ in seen]
    assert dones == sorted(dones) and dones[-1] == 48
    assert any(done % 1 for done in dones)  # within a pass, not only after it
    assert len(dones) == 2 * 2 * 6  # two convolutions a pass, six passes of 4 a view
