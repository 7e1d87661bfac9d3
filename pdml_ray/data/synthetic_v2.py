"""Synthetic scenes, generator version 2: scenes where a confident prediction is not truth.

Version 1 (``synthetic.py``) gives each of its 8 classes a texture no other class uses, so a
backbone that separates textures separates the classes, and a confident prediction far
from any click is right 85% of the time; on real scenes (the paper's Table 5) it is right
57% of the time. Version 2 keeps what makes real scenes hard:

- 17 classes, 7 stuff and 10 things, where a class is texture x shape x size x context:
  textures are shared, so ``puddle`` is ``water``'s ripples in a small flat ellipse on the
  ground, ``rock`` is ``road``'s gravel in a small blob, ``bush`` is ``grass``'s grass at the
  foot of a wall, ``window`` is ``sky``'s smooth shading in a rectangle inside a wall or
  building, ``bird`` is a tiny smooth blob in the sky, and ``sign`` and ``crate`` are both
  squares;
- pairs of classes sharing a texture also share a colour range, so only shape, size and
  context tell them apart;
- real-photo textures: scikit-image's ``brick``, ``grass`` and ``gravel`` photographs and
  crops of its other photos (BSD), beside procedural ones;
- long-tailed thing frequencies (the most frequent thing class is drawn about 9 times as
  often as the rarest), small things (a bird is 2-4 px across the radius at 96 px) and
  occlusion (a thing may hide up to 70% of another).

Everything here is numpy on one ``np.random.Generator``: the same generator state gives
the same scene. The names of the texture families and thing shapes are declared in
``TEXTURE_FAMILIES`` and ``THING_SHAPES`` and the renderer dispatches on them only, so a
test can hold a pretraining generator's families apart from these.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from .scene_drawing import finish_scene

STUFF_CLASSES = ("sky", "water", "road", "grass", "sand", "wall", "building")
THING_CLASSES = ("puddle", "rock", "bush", "window", "bird", "kite", "ball", "cone", "sign",
                 "crate")
CLASSES = STUFF_CLASSES + THING_CLASSES
PALETTE = (
    (70, 130, 180), (0, 80, 160), (128, 64, 128), (107, 142, 35), (210, 190, 140),
    (190, 153, 153), (70, 70, 70),
    (0, 160, 200), (120, 110, 100), (60, 200, 60), (200, 220, 255), (255, 100, 200),
    (150, 60, 200), (220, 20, 60), (250, 170, 30), (220, 220, 0), (160, 100, 40),
)

# Each class's texture family; classes that share one are the confusable pairs.
CLASS_TEXTURES = {
    "sky": "smooth", "window": "smooth", "bird": "smooth",
    "water": "ripples", "puddle": "ripples",
    "road": "gravel-photo", "rock": "gravel-photo",
    "grass": "grass-photo", "bush": "grass-photo",
    "sand": "grain", "ball": "grain",
    "wall": "brick-photo", "crate": "photo-crop", "building": "photo-crop",
    "kite": "dots", "cone": "stripes", "sign": "stripes",
}
TEXTURE_FAMILIES = ("smooth", "ripples", "gravel-photo", "grass-photo", "brick-photo",
                    "photo-crop", "grain", "dots", "stripes")
# Thing shapes, and for each thing: shape, radius range (fraction of the image side) and
# where it stands ("ground": on a ground band; "foot": on the border between the middle
# and the ground; "middle": inside a wall or building; "sky": in the sky).
THING_SHAPES = ("flat-ellipse", "blob", "rectangle", "rhombus", "disk", "triangle", "square")
THINGS = {
    "puddle": ("flat-ellipse", (0.06, 0.12), "ground"),
    "rock": ("blob", (0.03, 0.07), "ground"),
    "bush": ("blob", (0.06, 0.11), "foot"),
    "window": ("rectangle", (0.04, 0.07), "middle"),
    "bird": ("blob", (0.02, 0.04), "sky"),
    "kite": ("rhombus", (0.05, 0.09), "sky"),
    "ball": ("disk", (0.04, 0.08), "ground"),
    "cone": ("triangle", (0.05, 0.09), "ground"),
    "sign": ("square", (0.05, 0.08), "ground"),
    "crate": ("square", (0.06, 0.10), "ground"),
}
# Long tail: draw probability of each thing class, falling as 1 / rank (the order above).
THING_WEIGHTS = np.array([1.0 / rank for rank in range(1, len(THING_CLASSES) + 1)])
THING_WEIGHTS = THING_WEIGHTS / THING_WEIGHTS.sum()

# Hue centre per texture family (classes of one family share it) and the spread around it.
_FAMILY_HUES = {"smooth": 0.58, "ripples": 0.52, "gravel-photo": 0.08, "grass-photo": 0.28,
                "brick-photo": 0.02, "photo-crop": 0.12, "grain": 0.13, "dots": 0.80,
                "stripes": 0.95}
_HUE_SPREAD = 0.12
_GROUND = ("water", "road", "grass", "sand")
_MIDDLE = ("wall", "building")
_PHOTO_CROP_SOURCES = ("camera", "astronaut", "coffee", "rocket", "chelsea", "coins")
MIN_VISIBLE = 0.3  # a placed thing keeps at least this share of its pixels visible


# -- textures -------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A scikit-image photo as float grey in [0, 1], contrast-stretched (2-98 percentiles)."""
    from skimage import data

    image = np.asarray(getattr(data, name)(), dtype=np.float64)
    if image.ndim == 3:
        image = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    low, high = np.percentile(image, (2, 98))
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1)


def _sample_photo(rng: np.random.Generator, photo: np.ndarray, y: np.ndarray,
                  x: np.ndarray) -> np.ndarray:
    """The photo at random offset, scale (0.5-1.5 photo px per scene px) and quarter turn,
    looked up at scene coordinates ``y, x`` (wrapping at the photo's edges)."""
    photo = np.rot90(photo, int(rng.integers(4)))
    scale = rng.uniform(0.5, 1.5)
    rows = (np.floor(y * scale) + rng.integers(photo.shape[0])).astype(np.int64) % photo.shape[0]
    cols = (np.floor(x * scale) + rng.integers(photo.shape[1])).astype(np.int64) % photo.shape[1]
    return photo[rows, cols]


def _smooth(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Soft shading: a gradient along a random direction plus faint large waves."""
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (y * np.sin(angle) + x * np.cos(angle)) / 64.0
    waves = np.sin(2 * np.pi * (x / rng.uniform(30, 80) + rng.random())) \
        * np.sin(2 * np.pi * (y / rng.uniform(25, 60) + rng.random()))
    return np.clip(0.5 + 0.3 * (ramp - ramp.mean()) + 0.12 * waves, 0, 1)


def texture(family: str, rng: np.random.Generator, y: np.ndarray, x: np.ndarray,
            u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Blend weight in [0, 1] per pixel of one texture family. ``y, x``: image
    coordinates; ``u, v``: an object's rotated local coordinates (arrays of one shape)."""
    if family == "smooth":
        return _smooth(rng, y, x)
    if family == "ripples":
        period = rng.uniform(3.5, 6.0)
        wobble = rng.uniform(0.8, 2.0) * np.sin(2 * np.pi * (x / rng.uniform(10, 24) + rng.random()))
        return 0.5 + 0.5 * np.sin(2 * np.pi * (y + wobble) / period)
    if family == "grain":
        return rng.random(y.shape)
    if family == "dots":
        period = rng.uniform(4.0, 6.5)
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        return (np.hypot(du, dv) < 0.3 * period).astype(np.float64)
    if family == "stripes":
        return 0.5 + 0.5 * np.cos(2 * np.pi * v / rng.uniform(3.0, 5.0))
    if family == "photo-crop":
        name = _PHOTO_CROP_SOURCES[int(rng.integers(len(_PHOTO_CROP_SOURCES)))]
        return _sample_photo(rng, _photo(name), v, u)
    if family in ("gravel-photo", "grass-photo", "brick-photo"):
        return _sample_photo(rng, _photo(family.split("-")[0]), v, u)
    raise ValueError(f"unknown texture family {family!r}")


def thing_mask(shape: str, u: np.ndarray, v: np.ndarray, radius: float, aspect: float,
               rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a thing of half-size ``radius`` in its local coordinates."""
    if shape == "flat-ellipse":
        return (u / radius) ** 2 + (v / (0.45 * radius)) ** 2 <= 1
    if shape == "disk":
        return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1
    if shape == "blob":  # a disc with a wobbly rim: three random harmonics of the angle
        angle = np.arctan2(v, u)
        rim = radius * (1 + sum(rng.uniform(0, 0.18) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
                                for k in (2, 3, 5)))
        return np.hypot(u, v) <= rim
    if shape in ("square", "rectangle"):
        height = aspect if shape == "square" else 1.6 * aspect
        return (np.abs(u) <= 0.85 * radius) & (np.abs(v) <= 0.85 * radius * height)
    radius = 1.4 * radius  # triangles and rhombi cover less of their box
    if shape == "triangle":
        return (v >= -radius) & (v <= 0.8 * radius) & (np.abs(u) <= 0.5 * (v + radius))
    if shape == "rhombus":
        return np.abs(u) / (0.7 * radius) + np.abs(v) / radius <= 1
    raise ValueError(f"unknown thing shape {shape!r}")


# -- colours ----------------------------------------------------------------------------
def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + (h % 1.0) * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _colour_pair(rng: np.random.Generator, family: str) -> tuple[np.ndarray, np.ndarray]:
    hue = _FAMILY_HUES[family] + rng.uniform(-_HUE_SPREAD, _HUE_SPREAD)
    sat, value = rng.uniform(0.25, 0.8), rng.uniform(0.35, 0.9)
    step = rng.uniform(0.25, 0.5)
    value2 = value - step if value > 0.6 else value + step
    return (_hsv_to_rgb(hue, sat, value),
            _hsv_to_rgb(hue + rng.uniform(-0.04, 0.04), sat * rng.uniform(0.5, 1.0),
                        float(np.clip(value2, 0.05, 1.0))))


def _paint(rng: np.random.Generator, cls: str, y, x, u, v) -> np.ndarray:
    family = CLASS_TEXTURES[cls]
    first, second = _colour_pair(rng, family)
    weight = texture(family, rng, y, x, u, v)[:, None]
    return first * (1 - weight) + second * weight


# -- layout ------------------------------------------------------------------------------
def _border(rng: np.random.Generator, base: float, size: int) -> np.ndarray:
    """A wavy, tilted, noisy band border (row per column) around row ``base``."""
    columns = np.arange(size, dtype=np.float64)
    tilt = rng.uniform(-0.2, 0.2) * (columns - size / 2)
    wave = rng.uniform(1, 0.05 * size) * np.sin(2 * np.pi * (columns / (rng.uniform(0.3, 1.2) * size)
                                                            + rng.random()))
    walk = np.cumsum(rng.normal(0, 0.6, size))
    return base + tilt + wave + walk - np.linspace(walk[0], walk[-1], size)


def _stuff_layout(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Top to bottom: sky (most scenes), a wall or building (many), one or two grounds.

    Returns ``band (S, S)`` band index per pixel, the band classes, and ``zone (S, S)``
    0 sky, 1 middle, 2 ground: where things may stand.
    """
    bands: list[str] = []
    if rng.random() < 0.8:
        bands.append("sky")
    if rng.random() < 0.65:
        bands.append(_MIDDLE[int(rng.integers(2))])
    grounds = rng.choice(len(_GROUND), size=int(rng.integers(1, 3)), replace=False,
                         p=np.array([0.2, 0.35, 0.3, 0.15]))
    bands += [_GROUND[i] for i in grounds]
    shares = rng.dirichlet(np.full(len(bands), 3.0))
    y = np.arange(size, dtype=np.float64)[:, None]
    band = np.zeros((size, size), dtype=np.int64)
    for base in np.cumsum(shares)[:-1] * size:
        band += y >= _border(rng, base, size)[None, :]
    zones = np.array([0 if c == "sky" else 1 if c in _MIDDLE else 2 for c in bands])
    return band, bands, zones[band]


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: image ``uint8 (S, S, 3)``, label ``uint8 (S, S)`` (class ids 0..16) and
    instances ``uint8 (S, S)`` (1..n; stuff regions count as instances)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    band, bands, zone = _stuff_layout(rng, size)
    label = np.array([CLASSES.index(c) for c in bands])[band]
    instances = band + 1
    image = np.zeros((size, size, 3))
    for index, cls in enumerate(bands):
        region = band == index
        image[region] = _paint(rng, cls, y[region], x[region], x[region], y[region])
    image += rng.normal(0, 0.03, image.shape)
    # The foot of the middle band: ground pixels with a middle pixel a few rows above.
    middle = zone == 1
    above = np.zeros_like(middle)
    for rows in range(1, 7):
        above[rows:] |= middle[:-rows]
    foot = (zone == 2) & above
    where = {"sky": zone == 0, "middle": middle, "ground": zone == 2, "foot": foot}

    owners = np.zeros((size, size), dtype=np.int64)
    full_areas: list[int] = []
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(int(rng.integers(5, 11))):
        for _attempt in range(6):
            name = THING_CLASSES[int(rng.choice(len(THING_CLASSES), p=THING_WEIGHTS))]
            shape_name, (low, high), context = THINGS[name]
            allowed = np.flatnonzero(where[context])
            if allowed.size == 0:
                continue  # no sky for a bird, no wall for a window: draw another thing
            cy, cx = divmod(int(allowed[rng.integers(allowed.size)]), size)
            radius = size * rng.uniform(low, high)
            angle = rng.uniform(-0.3, 0.3) if context != "sky" else rng.uniform(0, 2 * np.pi)
            u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
            v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
            shape = thing_mask(shape_name, u, v, radius, rng.uniform(0.75, 1.0), rng)
            if shape.sum() < 4:
                continue
            trial = np.where(shape, len(full_areas) + 1, owners)
            visible = np.bincount(trial.ravel(), minlength=len(full_areas) + 2)[1:-1]
            if np.all(visible >= MIN_VISIBLE * np.asarray(full_areas, dtype=np.int64)):
                owners = trial
                full_areas.append(int(shape.sum()))
                colours = _paint(rng, name, y[shape], x[shape], u[shape], v[shape])
                rim = (shape & ~ndimage.binary_erosion(shape))[shape]
                colours[rim] *= rng.uniform(0.5, 0.9)  # a soft outline, not the same for all
                layers.append((shape, colours))
                label = np.where(shape, CLASSES.index(name), label)
                instances = np.where(shape, len(bands) + len(full_areas), instances)
                break
    return finish_scene(rng, image, label, instances, owners, layers, y, x)
