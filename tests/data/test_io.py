from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from pdml_ray.data import DataError
from pdml_ray.data.io import atomic_directory, atomic_file, image_size, read_image, read_label


@pytest.mark.parametrize("mode, dtype", [("L", np.uint8), ("I;16", np.uint16), ("P", np.uint8)])
def test_single_channel_label_modes_are_read_as_stored(tmp_path, mode, dtype):
    values = (np.arange(48).reshape(6, 8) * (1000 if mode == "I;16" else 5)).astype(dtype)
    img = Image.fromarray(values, mode="L" if mode == "P" else None)
    if mode == "P":
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, 0, 0)])
        img.putdata(values.ravel().tolist())
    img.save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as stored:
        assert stored.mode == mode
    out = read_label(tmp_path / "x.png")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA"])
def test_colour_label_pngs_are_refused(tmp_path, mode):
    Image.new(mode, (4, 4)).save(tmp_path / "x.png")
    with pytest.raises(DataError, match=f"mode {mode}"):
        read_label(tmp_path / "x.png")


def test_images_are_rgb_and_headers_give_the_size(tmp_path):
    Image.new("L", (5, 3), 7).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (3, 5, 3) and image.dtype == np.uint8 and (image == 7).all()
    assert image_size(tmp_path / "g.png") == (3, 5)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_and_garbage_files_fail_with_the_path(tmp_path, fmt):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, fmt)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match="cannot decode image") as info:
        read_image(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot decode"):
        read_image(path)
    with pytest.raises(DataError, match="image not found"):
        read_image(tmp_path / "missing.jpg")


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["f.txt"]


def test_atomic_directory_loses_a_race_cleanly(tmp_path):
    target = tmp_path / "d"
    with pytest.raises(FileExistsError):
        with atomic_directory(target) as mine:
            (mine / "a").write_text("mine")
            target.mkdir()
            (target / "b").write_text("theirs")
    assert os.listdir(target) == ["b"] and os.listdir(tmp_path) == ["d"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty) as mine:
        (mine / "a").write_text("mine")
    assert os.listdir(empty) == ["a"]


def test_data_error_names_the_source_and_survives_pickling():
    import pickle

    error = DataError("a/b.png", "label PNG has mode RGB")
    assert str(error) == "a/b.png: label PNG has mode RGB" and isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.source == "a/b.png"
