"""Images read where they are: local paths, or the same names below a folder URI that a
pyarrow filesystem serves (object storage on a cluster; a file:// URI here)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from pdml_ray.data import DataError
from pdml_ray.data.io import read_image
from pdml_ray.service.infer.sources import image_filesystem, image_sources, read_rgb


def test_a_folder_uri_serves_the_split_s_files_by_name(tmp_path):
    local = tmp_path / "split"
    local.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for name, mode in (("a.jpg", "RGB"), ("b.png", "L")):
        image = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
        image.convert(mode).save(local / name)
        paths.append(local / name)
    bucket = tmp_path / "bucket" / "images"
    shutil.copytree(local, bucket)
    filesystem, folder = image_filesystem(f"file://{bucket}")
    sources = image_sources(paths, folder)
    assert [s.image_id for s in sources] == ["a", "b"]
    assert [s.path for s in sources] == [str(bucket / "a.jpg"), str(bucket / "b.png")]
    for source, path in zip(sources, paths):
        assert np.array_equal(read_rgb(filesystem, source.path), read_image(path))
    filesystem, folder = image_filesystem(None)
    assert folder is None and image_sources(paths, None)[1].path == str(paths[1])


def test_unreadable_images_are_data_errors_naming_them(tmp_path):
    filesystem, _ = image_filesystem(None)
    with pytest.raises(DataError, match=rf"^{tmp_path / 'gone.jpg'}: cannot read image"):
        read_rgb(filesystem, str(tmp_path / "gone.jpg"))
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(DataError, match=r"text.jpg: cannot decode image"):
        read_rgb(filesystem, str(tmp_path / "text.jpg"))
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big.png: .*1200.*"):
        read_rgb(filesystem, str(tmp_path / "big.png"), max_pixels=1000)
