"""Tiny datasets written in each real layout under ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdml_ray.data import generate_scenes

SIZE = 32  # side of every generated image; the tests use the same value


def random_image(rng: np.random.Generator, size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def blocky_label(rng: np.random.Generator, max_value: int,
                 size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """A label map of 8x8 blocks with values in 0..max_value (0 = ignore in the layouts)."""
    blocks = rng.integers(0, max_value + 1, (size[0] // 8 + 1, size[1] // 8 + 1))
    return np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:size[0], :size[1]].astype(np.uint8)


def make_ade20k(root: Path, *, train: int = 3, val: int = 2, seed: int = 0) -> Path:
    """``root/ADEChallengeData2016/{images,annotations}/{training,validation}``; returns
    the ``ADEChallengeData2016`` folder."""
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    for folder, prefix, count in (("training", "ADE_train", train), ("validation", "ADE_val", val)):
        (base / "images" / folder).mkdir(parents=True)
        (base / "annotations" / folder).mkdir(parents=True)
        for i in range(1, count + 1):
            stem = f"{prefix}_{i:08d}"
            random_image(rng).save(base / "images" / folder / f"{stem}.jpg", quality=95)
            label = Image.fromarray(blocky_label(rng, 150))
            label.save(base / "annotations" / folder / f"{stem}.png")
    return base


def make_pascal_context(root: Path, *, train: int = 3, val: int = 2, seed: int = 0) -> Path:
    """``root/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext}``;
    returns the ``VOC2010`` folder."""
    rng = np.random.default_rng(seed)
    base = root / "VOC2010"
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (base / sub).mkdir(parents=True)
    for split, count, year in (("train", train, 2008), ("val", val, 2009)):
        ids = [f"{year}_{i:06d}" for i in range(count)]
        for image_id in ids:
            random_image(rng).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
            label = Image.fromarray(blocky_label(rng, 59))
            label.save(base / "SegmentationClassContext" / f"{image_id}.png")
        split_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        split_file.write_text("\n".join(ids) + "\n")
    return base


@pytest.fixture
def ade20k_root(tmp_path: Path) -> Path:
    return make_ade20k(tmp_path / "ade")


@pytest.fixture(name="make_ade20k")
def make_ade20k_fixture():
    """The layout writer itself, for tests that need other counts."""
    return make_ade20k


@pytest.fixture(name="make_pascal_context")
def make_pascal_context_fixture():
    return make_pascal_context


@pytest.fixture
def pascal_root(tmp_path: Path) -> Path:
    return make_pascal_context(tmp_path / "pascal")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared read-only synthetic scenes (6 train, 3 val, 32x32); copy before changing."""
    root = tmp_path_factory.mktemp("synthetic_shared") / "scenes"
    generate_scenes(root, train=6, val=3, size=SIZE, seed=0)
    return root
