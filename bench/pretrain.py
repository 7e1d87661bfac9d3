"""Pretrain a ResNet backbone on a synthetic "ImageNet": this project's stand-in for
ImageNet weights, which cannot be fetched on a machine without internet access.

The paper, and every user, fine-tunes an ImageNet-initialised ResNet; from random init
the benchmark measures a different regime (features that do not exist yet cannot be
shaped by a metric loss). This script trains a plain torchvision ResNet as an image
classifier on procedurally generated images with image-level labels only, and writes its
state_dict where ``model.pretrained=<file>`` loads it (the classifier ``fc.*`` is dropped
on load; the dilation of the segmentation backbone changes no parameter shape).

The images share nothing with the benchmark's scenes: this generator, its seed and its
categories are its own, it never calls ``pdml_ray.data``, and (recipe 2, the default) no
texture family or shape it draws defines a scene class of either scene generator
version (tests/test_pretrain.py holds the two generators' families apart). A category is
a (texture, shape) pair: one of 10 texture families (spokes, plaid, zigzags, hatching,
spirals, Voronoi cells, fish scales, herringbone, a hexagonal lattice, Truchet arcs)
painted inside one of 5 shapes (ring, cross, star, crescent, chevron) over a smooth
random background, 50 categories in all. Colours are drawn from the whole colour wheel
for every image, so a category is its texture and shape, never its colour. Recipe 1,
which the older tables used, drew gratings, checkers, dots, rings and speckle in discs,
squares and triangles: the looks of version 1's scene classes.

The output is cached under a name derived from every setting that changes the weights
(``bench/results/pretrained/resnet18-synthimagenet-c50-n250-64px-e4-<digest>.pt``); a
rerun with the same settings prints the path and trains nothing.

    .venv/bin/python bench/pretrain.py                       # ~7 min on 2 idle cores
    .venv/bin/python bench/pretrain.py --print-path          # the cached file's path only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
PRETRAINED = REPO / "bench" / "results" / "pretrained"

# Recipe 1 (the older figures) drew textures and shapes that define scene classes (its
# speckle is version 1's ground, its dots the kite, its rings the ball...), so its weights
# started out separating the scene classes. Recipe 2, the default, draws only families no
# scene class uses (tests/test_pretrain.py compares what both generators draw).
TEXTURES_BY_RECIPE = {
    1: ("grating", "fine-grating", "checker", "dots", "rings", "spokes", "plaid", "zigzag",
        "blobs", "speckle", "hatching", "spiral"),
    2: ("spokes", "plaid", "zigzag", "hatching", "spiral", "cells", "scales", "herringbone",
        "hex-lattice", "truchet"),
}
SHAPES_BY_RECIPE = {1: ("disk", "square", "triangle", "ring", "cross"),
                    2: ("ring", "cross", "star", "crescent", "chevron")}
RECIPE = 2  # bump when the generator or the training changes what a setting produces
TEXTURES = TEXTURES_BY_RECIPE[RECIPE]
SHAPES = SHAPES_BY_RECIPE[RECIPE]
CATEGORIES = tuple(f"{texture}-{shape}" for texture in TEXTURES for shape in SHAPES)
# The images are normalised as the segmentation datasets normalise theirs
# (pdml_ray.data.transforms), so the pretrained statistics carry over.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SPLIT_CODES = {"train": 0, "val": 1}


# -- the generator ------------------------------------------------------------------------
def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hue, sat, val = rng.uniform(), rng.uniform(0.2, 1.0), rng.uniform(0.15, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    return val - val * sat * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """``(size, size)`` noise in [0, 1], bilinearly upsampled from ``cells x cells``."""
    coarse = torch.from_numpy(rng.uniform(size=(1, 1, cells, cells)).astype(np.float32))
    return F.interpolate(coarse, size=(size, size), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


def texture(name: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pattern in [0, 1] over rotated, shape-centred coordinates ``u, v`` (about -1..1)."""
    phase = rng.uniform(0, 2 * np.pi)
    if name in ("grating", "fine-grating"):
        freq = rng.uniform(1.5, 2.5) if name == "grating" else rng.uniform(5.0, 7.0)
        return 0.5 + 0.5 * np.sin(2 * np.pi * freq * u + phase)
    if name == "checker":
        freq = rng.uniform(2.0, 3.5)
        return (np.sin(np.pi * freq * u + phase) * np.sin(np.pi * freq * v) > 0).astype(float)
    if name == "dots":
        pitch = rng.uniform(0.25, 0.4)
        du, dv = (u / pitch) % 1.0 - 0.5, (v / pitch) % 1.0 - 0.5
        return (du ** 2 + dv ** 2 < 0.09).astype(float)
    if name == "rings":
        return 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * np.hypot(u, v) + phase)
    if name == "spokes":
        return 0.5 + 0.5 * np.sin(rng.integers(4, 9) * np.arctan2(v, u) + phase)
    if name == "plaid":
        freq = rng.uniform(2.0, 4.0)
        return 0.25 * (2 + np.sin(2 * np.pi * freq * u + phase) + np.sin(2 * np.pi * freq * v))
    if name == "zigzag":
        freq = rng.uniform(2.5, 4.0)
        wave = np.abs((freq * (u + 0.25 * np.abs((3 * v) % 2 - 1)) + phase) % 2 - 1)
        return (wave > 0.5).astype(float)
    if name == "blobs":
        return (_smooth_noise(rng, u.shape[0], rng.integers(6, 10)) > 0.5).astype(float)
    if name == "speckle":
        return rng.uniform(size=u.shape)
    if name == "hatching":
        freq = rng.uniform(3.0, 5.0)
        lines = np.maximum(np.abs(np.sin(np.pi * freq * (u + v))),
                           np.abs(np.sin(np.pi * freq * (u - v) + phase)))
        return (lines > 0.92).astype(float)
    if name == "spiral":
        radius, angle = np.hypot(u, v), np.arctan2(v, u)
        return 0.5 + 0.5 * np.sin(2 * angle + 2 * np.pi * rng.uniform(2.5, 4.0) * radius + phase)
    if name == "cells":  # Voronoi cell walls around random seeds
        seeds = rng.uniform(-1.2, 1.2, size=(int(rng.integers(12, 20)), 2))
        dist = np.sort(np.hypot(u[..., None] - seeds[:, 0], v[..., None] - seeds[:, 1]), axis=-1)
        return (dist[..., 1] - dist[..., 0] < 0.06).astype(float)
    if name == "scales":  # overlapping fish-scale arcs on a staggered grid
        pitch = rng.uniform(0.3, 0.45)
        row = np.floor(v / pitch)
        du = (u / pitch + 0.5 * (row % 2)) % 1.0 - 0.5
        dv = (v / pitch) % 1.0
        return (np.abs(np.hypot(du, dv) - 0.5) < 0.08).astype(float)
    if name == "herringbone":  # slanted stripes that flip direction every column band
        width = rng.uniform(0.25, 0.4)
        sign = np.where(np.floor(u / width) % 2 == 0, 1.0, -1.0)
        return (np.sin(2 * np.pi * 3.0 * (v + sign * u) + phase) > 0.3).astype(float)
    if name == "hex-lattice":  # three gratings at 60 degrees, thresholded into a lattice
        freq = rng.uniform(2.5, 4.0)
        total = sum(np.cos(2 * np.pi * freq * (u * np.cos(a) + v * np.sin(a)) + phase)
                    for a in (0, np.pi / 3, 2 * np.pi / 3))
        return (total > 1.0).astype(float)
    if name == "truchet":  # quarter-circle arcs in tiles, each tile turned at random
        pitch = rng.uniform(0.3, 0.45)
        tiles = rng.integers(0, 2, size=(64, 64))
        iu, iv = np.floor(u / pitch).astype(int) % 64, np.floor(v / pitch).astype(int) % 64
        fu, fv = (u / pitch) % 1.0, (v / pitch) % 1.0
        fu = np.where(tiles[iu, iv] == 1, 1.0 - fu, fu)
        near = np.minimum(np.abs(np.hypot(fu, fv) - 0.5), np.abs(np.hypot(1 - fu, 1 - fv) - 0.5))
        return (near < 0.1).astype(float)
    raise ValueError(f"unknown texture {name!r}")


def shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape of radius about 1 in its own coordinates."""
    radius, angle = np.hypot(u, v), np.arctan2(v, u)
    if name == "star":  # five points
        return radius < 0.45 + 0.5 * np.abs(np.cos(2.5 * angle)) ** 3
    if name == "crescent":
        return (radius < 1.0) & (np.hypot(u - 0.45, v) > 0.75)
    if name == "chevron":  # an arrow head pointing up
        return (np.abs(u) < 1.0) & (v - 0.9 * np.abs(u) > -0.7) & (v - 0.9 * np.abs(u) < -0.05)
    if name == "disk":
        return u ** 2 + v ** 2 < 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.8
    if name == "triangle":
        return (v > -0.6) & (v < 1.1 - 1.7 * np.abs(u)) & (np.abs(u) < 1.0)
    if name == "ring":
        return (radius < 1.0) & (radius > 0.55)
    if name != "cross":
        raise ValueError(f"unknown shape {name!r}")
    return ((np.abs(u) < 0.3) | (np.abs(v) < 0.3)) & (np.maximum(np.abs(u), np.abs(v)) < 1.0)


def make_image(category: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of ``category`` (an index into CATEGORIES)."""
    texture_index, shape_index = divmod(category, len(SHAPES))
    axis = np.linspace(-1.0, 1.0, size)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    background = (_random_colour(rng)[None, None] * (0.6 + 0.4 * _smooth_noise(rng, size, 3))[..., None]
                  + 0.4 * _random_colour(rng)[None, None] * _smooth_noise(rng, size, 4)[..., None])
    centre = rng.uniform(-0.3, 0.3, size=2)
    scale = rng.uniform(0.45, 0.75)
    theta = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(theta), np.sin(theta)
    dx, dy = (x - centre[0]) / scale, (y - centre[1]) / scale
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    mask = shape_mask(SHAPES[shape_index], u, v)
    pattern = texture(TEXTURES[texture_index], u, v, rng)[..., None]
    first, second = _random_colour(rng), _random_colour(rng)
    while np.abs(first - second).sum() < 0.6:  # the texture must show
        second = _random_colour(rng)
    foreground = first * pattern + second * (1 - pattern)
    image = np.where(mask[..., None], foreground, background)
    image = image * rng.uniform(0.7, 1.2) + rng.normal(0, 0.03, size=image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_split(split: str, per_class: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``images (N, 3, size, size)`` uint8 and ``labels (N,)``, N = categories x per_class.

    Image i of category c draws from ``default_rng([seed, split, c, i])``: the same
    settings give the same images, and a category's first images do not depend on
    ``per_class``.
    """
    images, labels = [], []
    for category in range(len(CATEGORIES)):
        for index in range(per_class):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], category, index])
            images.append(make_image(category, rng, size))
            labels.append(category)
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return stacked, torch.tensor(labels)


# -- training ------------------------------------------------------------------------------
def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and random crops of a 4-pixel reflect padding."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    size = images.shape[-1]
    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")
    dy, dx = torch.randint(0, 9, (2,), generator=generator).tolist()  # one offset per batch
    return padded[..., dy:dy + size, dx:dx + size]


_WEIGHT_SETTINGS = ("backbone", "per_class", "size", "epochs", "batch_size", "lr",
                    "weight_decay", "seed")


def cache_path(args: argparse.Namespace) -> Path:
    """The file name carries the main settings and a digest of every setting that changes
    the weights, so weights of other settings are never silently reused."""
    settings = {name: getattr(args, name) for name in _WEIGHT_SETTINGS}
    digest = hashlib.sha256(json.dumps({"recipe": RECIPE, **settings},
                                       sort_keys=True).encode()).hexdigest()[:8]
    return Path(args.out_dir) / (f"{args.backbone}-synthimagenet-c{len(CATEGORIES)}-"
                                 f"n{args.per_class}-{args.size}px-e{args.epochs}-{digest}.pt")


def build_classifier(backbone: str) -> torch.nn.Module:
    """A plain torchvision ResNet (strides, not dilation: as ImageNet weights are trained)
    whose ``fc`` scores the texture and the shape of a category side by side.

    A category is a (texture, shape) pair, so its log-probability is the sum of the two
    factors' log-softmaxes: every image then teaches both factors, where a 60-way softmax
    teaches each category from its own images alone and barely left chance in a first
    few hundred steps here. The last BatchNorm of each block starts at zero (an identity
    block), which speeds up the first steps of a ResNet trained from scratch.
    """
    from torchvision.models import get_model

    return get_model(backbone, weights=None, num_classes=len(TEXTURES) + len(SHAPES),
                     zero_init_residual=True)


def category_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``(N, categories)`` log p(texture) + log p(shape) of each category from the
    factored ``fc``."""
    texture = logits[:, :len(TEXTURES)].log_softmax(1)
    shape = logits[:, len(TEXTURES):].log_softmax(1)
    return (texture[:, :, None] + shape[:, None, :]).flatten(1)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of the category, i.e. the texture's plus the shape's."""
    texture, shape = labels // len(SHAPES), labels % len(SHAPES)
    return (F.cross_entropy(logits[:, :len(TEXTURES)], texture, label_smoothing=0.1)
            + F.cross_entropy(logits[:, len(TEXTURES):], shape, label_smoothing=0.1))


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch: int = 256) -> float:
    """Top-1 accuracy over the categories."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch):
        scores = category_log_probs(model(normalise(images[start:start + batch])))
        correct += int((scores.argmax(1) == labels[start:start + batch]).sum())
    return correct / max(len(labels), 1)


def pretrain(args: argparse.Namespace) -> Path:
    """Generate, train, write ``cache_path(args)`` and a JSON of what it measured."""
    out = cache_path(args)
    torch.manual_seed(args.seed)
    tick = time.perf_counter()
    train_images, train_labels = make_split("train", args.per_class, args.size, args.seed)
    val_images, val_labels = make_split("val", args.val_per_class, args.size, args.seed)
    generated = time.perf_counter() - tick
    print(f"generated {len(train_labels)} train / {len(val_labels)} val images of "
          f"{len(CATEGORIES)} categories in {generated:.0f} s", flush=True)

    model = build_classifier(args.backbone).to(memory_format=torch.channels_last)
    steps_per_epoch = len(train_labels) // args.batch_size
    total = steps_per_epoch * args.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # One cycle: a short linear warm-up, then cosine decay to zero (pure function of step).
    warmup = max(total // 20, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))))
    generator = torch.Generator().manual_seed(args.seed)
    history = []
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_labels), generator=generator)
        running, seen = 0.0, 0
        for batch_start in range(0, steps_per_epoch * args.batch_size, args.batch_size):
            index = order[batch_start:batch_start + args.batch_size]
            images = normalise(augment(train_images[index], generator))
            images = images.contiguous(memory_format=torch.channels_last)
            loss = classification_loss(model(images), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            running += loss.item() * len(index)
            seen += len(index)
            if step % 20 == 0 or step == total:
                elapsed = time.perf_counter() - tick
                print(f"\repoch {epoch + 1}/{args.epochs}  step {step}/{total}  "
                      f"loss {running / seen:.3f}  {elapsed / 60:.1f} min", end="", flush=True)
        val_accuracy = accuracy(model, val_images, val_labels)
        history.append({"epoch": epoch + 1, "train_loss": running / max(seen, 1),
                        "val_accuracy": val_accuracy,
                        "minutes": (time.perf_counter() - tick) / 60})
        print(f"\nepoch {epoch + 1}/{args.epochs}  val accuracy {val_accuracy:.3f} "
              f"(chance {1 / len(CATEGORIES):.3f})", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".pt.partial")
    torch.save(model.state_dict(), partial)
    os.replace(partial, out)  # never a half-written file under the cached name
    report = {"file": str(out), "categories": list(CATEGORIES), "settings": vars(args),
              "generation_seconds": generated, "total_minutes": (time.perf_counter() - tick) / 60,
              "history": history}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18",
                        choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    parser.add_argument("--per-class", type=int, default=250, help="train images per category")
    parser.add_argument("--val-per-class", type=int, default=20,
                        help="held-out images per category (accuracy only)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1234,
                        help="generator and training seed (the scenes' generator uses 0)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out-dir", default=str(PRETRAINED))
    parser.add_argument("--print-path", action="store_true",
                        help="print the cached file's path and exit (whether or not it exists)")
    parser.add_argument("--force", action="store_true", help="retrain even when cached")
    args = parser.parse_args(argv)
    for name in ("per_class", "val_per_class", "epochs", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.size < 32:
        parser.error("--size must be >= 32 (a ResNet reduces it 32-fold)")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out = cache_path(args)
    if args.print_path:
        print(out)
        return out
    if out.is_file() and not args.force:
        print(f"cached: {out}")
        return out
    torch.set_num_threads(args.threads)
    out = pretrain(args)
    print(f"wrote {out}\nuse it with: --set model.pretrained={out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
