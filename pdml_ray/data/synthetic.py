"""Synthetic street-like scenes: this project's stand-in for real data in demos and tests.

Each scene has 2-4 "stuff" regions (sky, ground, water, wall) laid out as bands with wavy,
noisy borders, and 4-7 "thing" instances (ball, crate, cone, kite) painted over them with
occlusion. Classes are told apart by texture and shape, not by colour: every region and
instance draws its colours from a wide hue range around a class centre, and the ranges of
different classes overlap. Things are 15-32% of the image side across, with a texture tied
to their class, so a small network can learn them: things of 7-14 px told apart by
shape alone reach only 0.07-0.28 IoU even with full masks, and a benchmark of them
cannot show what point supervision loses.

Scenes are written in the ADE20K layout, plus instance maps and a ``classes.json``::

    root/
        images/{training,validation}/synthetic_train_00000.jpg      (JPEG, quality 95)
        annotations/{training,validation}/synthetic_train_00000.png  (0 = ignore, k = class k-1)
        instances/{training,validation}/synthetic_train_00000.png    (0 = none, 8-bit)
        classes.json      class names, palette, stuff/things, generation settings

Generation is deterministic: each image draws from its own ``default_rng([seed, split,
index])``, so the same settings give the same bytes, and a split's first images do not
depend on how many images are generated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from . import synthetic_v2 as v2
from .base import SPLIT_FOLDERS, ImageRecord, SegmentationDataset, paired_records
from .errors import DataError
from .io import atomic_directory
from .scene_drawing import finish_scene

STUFF_CLASSES = ("sky", "ground", "water", "wall")
THING_CLASSES = ("ball", "crate", "cone", "kite")
SYNTHETIC_CLASSES = STUFF_CLASSES + THING_CLASSES
SYNTHETIC_PALETTE = (
    (70, 130, 180), (152, 109, 62), (0, 80, 160), (190, 153, 153),
    (220, 20, 60), (250, 170, 30), (0, 160, 60), (150, 60, 200),
)
GENERATOR_VERSION = 1
JPEG_QUALITY = 95

# Hue centre of each class (fraction of the colour wheel) and the half-width of the range
# its colours come from: 0.25 is twice the spacing of the centres, so every hue is shared
# by several classes and colour alone cannot tell them apart.
_HUE_CENTRES = (0.58, 0.08, 0.50, 0.00, 0.15, 0.33, 0.75, 0.88)
_HUE_SPREAD = 0.25
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def scene_stem(split: str, index: int) -> str:
    return f"synthetic_{split}_{index:05d}"


# -- one scene -----------------------------------------------------------------------
def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1], hue wraps) -> RGB float (3,) in [0, 1]."""
    h = (h % 1.0) * 6.0
    i = int(h) % 6
    f = h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _colour_pair(rng: np.random.Generator, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """Two colours of one hue whose brightness differs enough for the texture to show.

    Things get stronger contrast than stuff: a texture statistic, not a colour, that
    helps a small network find them.
    """
    hue = _HUE_CENTRES[cls] + rng.uniform(-_HUE_SPREAD, _HUE_SPREAD)
    sat = rng.uniform(0.3, 0.9)
    value = rng.uniform(0.35, 0.9)
    is_thing = SYNTHETIC_CLASSES[cls] in THING_CLASSES
    step = rng.uniform(0.4, 0.55) if is_thing else rng.uniform(0.25, 0.4)
    value2 = value - step if value > 0.6 else value + step
    first = _hsv_to_rgb(hue, sat, value)
    second = _hsv_to_rgb(hue + rng.uniform(-0.05, 0.05), sat * rng.uniform(0.5, 1.0),
                         float(np.clip(value2, 0.05, 1.0)))
    return first, second


def _texture(rng: np.random.Generator, cls: int, y: np.ndarray, x: np.ndarray,
             u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Blend weight in [0, 1] per pixel: the class's texture. ``y, x`` are image
    coordinates, ``u, v`` an object's rotated local coordinates, in pixels, of the pixels
    to texture (arrays of one shape, e.g. ``(N,)`` for the pixels of one region)."""
    name = SYNTHETIC_CLASSES[cls]
    if name == "sky":  # smooth: a soft vertical gradient with large faint blobs
        blobs = np.sin(2 * np.pi * (x / rng.uniform(40, 90) + rng.random())) \
            * np.sin(2 * np.pi * (y / rng.uniform(30, 70) + rng.random()))
        return np.clip(0.5 + 0.35 * (y - y.mean()) / (np.ptp(y) + 1) + 0.15 * blobs, 0, 1)
    if name == "ground":  # grain: independent per-pixel noise
        return rng.random(y.shape)
    if name == "water":  # horizontal ripples with a wavy phase
        period = rng.uniform(4.0, 6.0)
        wobble = rng.uniform(1.0, 2.5) * np.sin(2 * np.pi * (x / rng.uniform(12, 24)
                                                            + rng.random()))
        return 0.5 + 0.5 * np.sin(2 * np.pi * (y + wobble) / period)
    if name == "wall":  # bricks: mortar lines, every other row shifted by half a brick
        height, width = rng.uniform(6, 8), rng.uniform(10, 14)
        row = np.floor((y + rng.uniform(0, height)) / height)
        in_row = np.mod(y + rng.uniform(0, height), height)
        in_brick = np.mod(x + (row % 2) * width / 2, width)
        return ((in_row < 1.5) | (in_brick < 1.5)).astype(np.float64)
    if name == "ball":  # concentric rings
        return 0.5 + 0.5 * np.cos(2 * np.pi * np.hypot(u, v) / rng.uniform(4.0, 6.0))
    if name == "crate":  # checkerboard aligned with the crate
        period = rng.uniform(4.0, 6.0)
        return np.mod(np.floor(u / period) + np.floor(v / period), 2)
    if name == "cone":  # stripes parallel to the base
        return 0.5 + 0.5 * np.cos(2 * np.pi * v / rng.uniform(3.5, 5.0))
    # kite: a grid of dots
    period = rng.uniform(5.0, 7.0)
    du = np.mod(u, period) - period / 2
    dv = np.mod(v, period) - period / 2
    return (np.hypot(du, dv) < 0.32 * period).astype(np.float64)


def _thing_shape(cls: int, u: np.ndarray, v: np.ndarray, radius: float,
                 aspect: float) -> np.ndarray:
    """Boolean mask of a thing of half-size ``radius`` in its local coordinates."""
    name = SYNTHETIC_CLASSES[cls]
    if name == "ball":
        return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1
    if name == "crate":
        return (np.abs(u) <= 0.85 * radius) & (np.abs(v) <= 0.85 * radius * aspect)
    # Triangles and rhombi cover less of their box than discs and squares: enlarged by 1.4
    # so that every class has a similar area.
    if name == "cone":  # isosceles triangle, apex up
        radius = 1.4 * radius
        return (v >= -radius) & (v <= 0.8 * radius) & (np.abs(u) <= 0.5 * (v + radius))
    radius = 1.4 * radius
    return np.abs(u) / (0.7 * radius) + np.abs(v) / radius <= 1  # kite: a rhombus


def _stuff_layout(rng: np.random.Generator, size: int, y: np.ndarray,
                  x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bands of 2-4 stuff classes with wavy, noisy, tilted borders.

    Returns ``band (H, W)`` index of the band each pixel is in and ``classes (k,)``.
    """
    count = int(rng.integers(2, 5))
    classes = rng.permutation(len(STUFF_CLASSES))[:count]
    shares = rng.dirichlet(np.full(count, 3.0))
    bases = np.cumsum(shares)[:-1] * size
    band = np.zeros((size, size), dtype=np.int64)
    columns = x[0]
    for base in bases:
        tilt = rng.uniform(-0.25, 0.25) * (columns - size / 2)
        # Two waves (a long and a short one, periods as fractions of the image side) ...
        long_wave = rng.uniform(1, 0.06 * size) * np.sin(
            2 * np.pi * (columns / (rng.uniform(0.3, 1.2) * size) + rng.random()))
        short_wave = rng.uniform(0.5, 0.03 * size) * np.sin(
            2 * np.pi * (columns / (rng.uniform(0.08, 0.25) * size) + rng.random()))
        # ... and noise: a random walk, detrended so that it does not shift the band.
        walk = np.cumsum(rng.normal(0, 0.6, size))
        border = base + tilt + long_wave + short_wave + walk - np.linspace(walk[0], walk[-1], size)
        band += y >= border[None, :]
    return band, classes


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene.

    Returns:
        image ``uint8 (S, S, 3)``, label ``uint8 (S, S)`` class ids (0..7, no ignore),
        instances ``uint8 (S, S)`` instance ids 1..n (stuff regions count as instances).
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    band, stuff = _stuff_layout(rng, size, y, x)
    label = np.asarray(stuff)[band]
    instances = band + 1
    image = np.zeros((size, size, 3))
    for index, cls in enumerate(stuff):
        region = band == index  # textures are computed on the region's pixels only
        first, second = _colour_pair(rng, int(cls))
        weight = _texture(rng, int(cls), y[region], x[region], x[region], y[region])[:, None]
        noise = rng.normal(0, 0.03, (len(weight), 3))
        image[region] = first * (1 - weight) + second * weight + noise

    # Things: accept a placement only if every thing already placed keeps at least half of
    # itself visible, so occlusion never hides an instance (or its point) completely.
    owners = np.zeros((size, size), dtype=np.int64)  # 0 = stuff, j = j-th placed thing
    full_areas: list[int] = []
    layers: list[tuple[np.ndarray, np.ndarray]] = []  # (shape mask, colours of its pixels)
    for _ in range(int(rng.integers(4, 8))):
        for _attempt in range(5):
            cls = len(STUFF_CLASSES) + int(rng.integers(len(THING_CLASSES)))
            radius = 0.5 * size * rng.uniform(0.18, 0.36)
            cy, cx = rng.uniform(0.1, 0.9, 2) * size
            angle = rng.uniform(0, 2 * np.pi)
            u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
            v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
            shape = _thing_shape(cls, u, v, radius, rng.uniform(0.75, 1.0))
            if shape.sum() < 0.15 * np.pi * radius ** 2:
                continue  # mostly outside the image: try another placement
            trial = np.where(shape, len(full_areas) + 1, owners)
            visible = np.bincount(trial.ravel(), minlength=len(full_areas) + 2)[1:-1]
            if np.all(visible >= 0.5 * np.asarray(full_areas, dtype=np.int64)):
                owners = trial
                full_areas.append(int(shape.sum()))
                first, second = _colour_pair(rng, cls)
                weight = _texture(rng, cls, y[shape], x[shape], u[shape], v[shape])[:, None]
                colours = first * (1 - weight) + second * weight
                rim = (shape & ~ndimage.binary_erosion(shape))[shape]
                colours[rim] *= 0.4  # a dark outline, as drawn objects have
                layers.append((shape, colours))
                label = np.where(shape, cls, label)
                instances = np.where(shape, len(stuff) + len(full_areas), instances)
                break
    return finish_scene(rng, image, label, instances, owners, layers, y, x)


# -- a whole dataset -----------------------------------------------------------------
class Generator(NamedTuple):
    """One version of the scene generator: its renderer and the classes it draws."""

    render: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    stuff: tuple[str, ...]
    things: tuple[str, ...]


# Version 1 stays as it was (the older figures in docs/benchmarks.md ran on it); version 2
# (synthetic_v2.py) is the one whose confident predictions are not the truth.
GENERATORS = {
    1: Generator(render_scene, SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, STUFF_CLASSES, THING_CLASSES),
    2: Generator(v2.render_scene, v2.CLASSES, v2.PALETTE, v2.STUFF_CLASSES, v2.THING_CLASSES),
}


def write_scenes(out_dir: str | os.PathLike, *, train: int, val: int, size: int,
                 seed: int, version: int = 1, test: int = 0,
                 test_seed: int | None = None) -> dict[str, Any]:
    """Write scenes into an existing folder (no atomicity: see :func:`generate_scenes`).

    The test split (``test`` scenes, none by default) draws from its own generator seed
    ``test_seed`` (default ``seed + 1``): scenes no train or val image shares a random
    stream with, for judging what was tuned on val.

    Returns statistics: ``{"size", "seed", "splits": {split: {"images", "class_pixels"
    (list per class), "instances_per_image" (list per image)}}}``.
    """
    generator = GENERATORS[version]
    test_seed = seed + 1 if test_seed is None else test_seed
    out_dir = Path(out_dir)
    stats: dict[str, Any] = {"size": size, "seed": seed, "version": version, "splits": {},
                             "classes": list(generator.classes),
                             "stuff": list(generator.stuff)}
    for split, count in (("train", train), ("val", val), ("test", test)):
        if not count:
            continue
        folder = SPLIT_FOLDERS[split]
        for kind in ("images", "annotations", "instances"):
            (out_dir / kind / folder).mkdir(parents=True, exist_ok=True)
        class_pixels = np.zeros(len(generator.classes), dtype=np.int64)
        instances_per_image = []
        split_seed = test_seed if split == "test" else seed
        for index in range(count):
            rng = np.random.default_rng([split_seed, _SPLIT_CODES[split], index])
            image, label, instances = generator.render(rng, size)
            stem = scene_stem(split, index)
            Image.fromarray(image).save(out_dir / "images" / folder / f"{stem}.jpg",
                                        quality=JPEG_QUALITY, subsampling=0)
            Image.fromarray(label + 1).save(out_dir / "annotations" / folder / f"{stem}.png")
            Image.fromarray(instances).save(out_dir / "instances" / folder / f"{stem}.png")
            class_pixels += np.bincount(label.ravel(), minlength=len(generator.classes))
            instances_per_image.append(int(instances.max()))
        stats["splits"][split] = {"images": count, "class_pixels": class_pixels.tolist(),
                                  "instances_per_image": instances_per_image}
    info = {
        "classes": list(generator.classes),
        "palette": [list(colour) for colour in generator.palette],
        "stuff": list(generator.stuff),
        "things": list(generator.things),
        "label_encoding": "annotations: PNG value 0 = ignore, k = class k-1; "
                          "instances: 0 = none, k = instance k",
        "generation": generation_settings(train=train, val=val, size=size, seed=seed,
                                          version=version, test=test, test_seed=test_seed),
    }
    (out_dir / "classes.json").write_text(json.dumps(info, indent=2) + "\n")
    return stats


def generation_settings(*, train: int, val: int, size: int, seed: int, version: int = 1,
                        test: int = 0, test_seed: int | None = None) -> dict[str, int]:
    settings = {"train": train, "val": val, "size": size, "seed": seed, "version": version}
    if test:  # version 1 scenes without a test split keep the settings they always had
        settings.update(test=test, test_seed=seed + 1 if test_seed is None else test_seed)
    return settings


def generate_scenes(out_dir: str | os.PathLike, *, train: int, val: int, size: int,
                    seed: int, version: int = 1, test: int = 0,
                    test_seed: int | None = None) -> dict[str, Any]:
    """Generate ``train`` + ``val`` scenes of ``size`` x ``size`` pixels into ``out_dir``.

    Written atomically: into a temporary folder beside ``out_dir``, renamed at the end,
    so an interrupted run leaves nothing behind. ``out_dir`` must not exist or be empty.
    Returns the statistics of :func:`write_scenes` (see :func:`describe_scenes`).
    """
    out_dir = Path(out_dir)
    if train < 1 or val < 1 or test < 0 or size < 16:
        raise ValueError(f"need train >= 1, val >= 1, test >= 0 and size >= 16, got {train}, "
                         f"{val}, {test}, {size}")
    if version not in GENERATORS:
        raise ValueError(f"unknown generator version {version}; known: {sorted(GENERATORS)}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(out_dir, "already exists and is not empty; remove it or choose another "
                                 "folder")
    with atomic_directory(out_dir) as tmp:
        stats = write_scenes(tmp, train=train, val=val, size=size, seed=seed, version=version,
                             test=test, test_seed=test_seed)
    return stats


def describe_scenes(stats: dict[str, Any]) -> str:
    """A readable summary: images per split, class pixel shares, instances per image."""
    lines = [f"scene size {stats['size']}x{stats['size']}, seed {stats['seed']}, "
             f"generator version {stats.get('version', 1)}"]
    splits = stats["splits"]
    lines.append("images: " + ", ".join(f"{split} {info['images']}"
                                        for split, info in splits.items()))
    for split, info in splits.items():
        counts = np.asarray(info["instances_per_image"])
        lines.append(f"instances per image ({split}): mean {counts.mean():.2f}, "
                     f"min {counts.min()}, max {counts.max()}")
    lines.append("class pixel shares:")
    header = "".join(f" {split:>7}" for split in splits)
    lines.append(f"  {'id':>2}  {'class':<8} {'kind':<6}{header}")
    totals = {split: max(sum(info["class_pixels"]), 1) for split, info in splits.items()}
    stuff = stats.get("stuff", STUFF_CLASSES)
    for cls, name in enumerate(stats.get("classes", SYNTHETIC_CLASSES)):
        kind = "stuff" if name in stuff else "thing"
        shares = "".join(f" {100 * info['class_pixels'][cls] / totals[split]:6.1f}%"
                         for split, info in splits.items())
        lines.append(f"  {cls:>2}  {name:<8} {kind:<6}{shares}")
    return "\n".join(lines)


def read_scene_info(root: str | os.PathLike,
                    classes: tuple[str, ...] = SYNTHETIC_CLASSES) -> dict[str, Any]:
    """The ``classes.json`` of generated scenes of ``classes``; DataError if there is none,
    it is broken, or the scenes have other classes (another generator version)."""
    path = Path(root) / "classes.json"
    if not path.is_file():
        raise DataError(root, "no synthetic scenes here (classes.json not found); generate them "
                              "with `python -m jobs.make_synthetic --out DIR`")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read: {exc}") from None
    if not isinstance(info, dict) or tuple(info.get("classes", ())) != classes:
        version = info.get("generation", {}).get("version", 1) if isinstance(info, dict) else "?"
        raise DataError(path, f"these scenes have other classes (generator version {version}) "
                              f"than this dataset's {len(classes)} ({', '.join(classes[:4])}, ...); "
                              f"use the dataset of their version, or regenerate them")
    return info


class SyntheticDataset(SegmentationDataset):
    """Generated scenes (:func:`generate_scenes`), version 1; they come with instance maps
    and a labelled test split when generated with one."""

    name = "synthetic"
    generator_version = 1
    classes = SYNTHETIC_CLASSES
    palette = SYNTHETIC_PALETTE
    stuff = STUFF_CLASSES

    @classmethod
    def find_root(cls, root: Path) -> Path:
        read_scene_info(root, cls.classes)
        return root

    def list_records(self) -> list[ImageRecord]:
        folder = SPLIT_FOLDERS[self.split]
        return paired_records(self.root / "images" / folder, self.root / "annotations" / folder,
                              instance_dir=self.root / "instances" / folder)


class SyntheticV2Dataset(SyntheticDataset):
    """Generated scenes of version 2 (:mod:`pdml_ray.data.synthetic_v2`): 17 classes that
    share textures, long-tailed, with small and occluded things."""

    name = "synthetic_v2"
    generator_version = 2
    classes = v2.CLASSES
    palette = v2.PALETTE
    stuff = v2.STUFF_CLASSES
