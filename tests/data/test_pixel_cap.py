"""data.max_image_pixels: the pixel cap is a config value that reaches every place an image
is opened for training (the driver's header check, the workers' datasets), evaluation and
prediction, and a refused file is named with its pixel count and the key to raise."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pdml_ray.config import ConfigError, from_dict, resolve_paths
from pdml_ray.data import DataError, build_dataset
from pdml_ray.data.io import MAX_IMAGE_PIXELS, read_image
from pdml_ray.service.train.driver import prepare_data
from pdml_ray.service.predict import decode_image, predict_local

SIDE = 32  # the synthetic scenes' side: 1024 pixels each


def refusal(path, pixels: int, cap: int) -> str:
    return (f"{path}: image is {SIDE}x{SIDE} (HxW), {pixels} pixels: more than "
            f"data.max_image_pixels = {cap}; downscale it, or raise data.max_image_pixels "
            f"(--set data.max_image_pixels=N)")


def config(tmp_path, **data):
    return resolve_paths(from_dict({"data": {
        "dataset": "synthetic", "root": str(tmp_path / "synthetic"), "synthetic_train": 4,
        "synthetic_val": 2, "synthetic_size": SIDE, "crop_size": SIDE, **data}}), tmp_path)


def test_the_default_cap_is_64_megapixels_and_the_key_must_be_positive(tmp_path):
    assert config(tmp_path).data.max_image_pixels == MAX_IMAGE_PIXELS == 64_000_000
    for bad in (0, -5):
        with pytest.raises(ConfigError, match="data.max_image_pixels: must be > 0"):
            config(tmp_path, max_image_pixels=bad)


def test_training_refuses_an_image_over_the_configured_cap_before_any_worker(tmp_path):
    cfg = config(tmp_path, max_image_pixels=1000)
    with pytest.raises(DataError) as info:
        prepare_data(cfg)  # the driver's header check of both splits
    first = build_dataset(cfg.data, "train").records[0].image_path
    assert str(info.value).startswith(refusal(first, 1024, 1000) + " (and ")
    # A worker's dataset, built from the same config, refuses the decoded image as well.
    with pytest.raises(DataError) as info:
        build_dataset(cfg.data, "train")[0]
    assert str(info.value) == refusal(first, 1024, 1000)
    # At the cap the same files train: the cap is a maximum, not a bound to stay under.
    prepare_data(config(tmp_path, max_image_pixels=SIDE * SIDE))
    assert build_dataset(config(tmp_path, max_image_pixels=SIDE * SIDE).data, "train")[0]


def test_evaluation_refuses_an_image_over_the_configured_cap(tmp_path):
    cfg = config(tmp_path, max_image_pixels=1023)
    val = build_dataset(cfg.data, "val")
    with pytest.raises(DataError) as info:
        val.load_pair(0)
    assert str(info.value) == refusal(val.records[0].image_path, 1024, 1023)


def test_prediction_refuses_an_image_over_the_configured_cap(tmp_path):
    cfg = config(tmp_path, max_image_pixels=1000)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(photo)

    class NeverCalled:  # the file is refused from its header, before the model
        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name})")

    out = tmp_path / "out"
    out.mkdir()
    [[outcome]] = list(predict_local(NeverCalled(), [photo], out,
                                     max_pixels=cfg.data.max_image_pixels))
    assert f"error: {outcome.source}: {outcome.error}" == "error: " + refusal(photo, 1024, 1000)
    assert outcome.outputs == () and not any(out.iterdir())
    assert decode_image(photo.read_bytes(), SIDE * SIDE).shape == (SIDE, SIDE, 3)


def test_functions_without_a_config_keep_the_default_cap(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(photo)
    assert read_image(photo).shape == (SIDE, SIDE, 3)
    with pytest.raises(DataError) as info:
        read_image(photo, max_pixels=100)
    assert str(info.value) == refusal(photo, 1024, 100)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(buffer, format="JPEG")
    with pytest.raises(DataError) as info:
        decode_image(buffer.getvalue(), max_pixels=100, name=photo)
    assert str(info.value) == refusal(photo, 1024, 100)
