"""Prediction on a user's image files: class-id PNGs and overlays.

For every input ``photo.jpg`` the output folder gets ``photo_classes.png`` (palette PNG,
pixel value = class id) and ``photo_overlay.png`` (the photo blended with the colour mask,
with a legend). Files are written atomically, so an interrupted run never leaves half a
PNG. A file that cannot be read or decoded, or has more than ``data.max_image_pixels``
pixels, is reported and skipped; the others go on.

Photos are predicted at the model's working resolution unless the options say
``resolution=None`` (:meth:`SceneParser.predict`): their shorter side scaled to the side of
the model's training crops, the class map scaled back to the photo's size.

:func:`predict_local` predicts in this process and yields one ``[outcome]`` per image;
many images go through Ray Data instead (:mod:`pdml_ray.service.infer.predict`), which
reuses this module's reading, rendering and writing.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from pdml_ray.data.errors import DataError
from pdml_ray.data.io import DECODE_ERRORS, MAX_IMAGE_PIXELS, atomic_file, decoded_image
from pdml_ray.inference import Progress, SceneParser
from pdml_ray.reports import class_id_image, overlay, png_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
OUTPUT_SUFFIXES = ("_classes.png", "_overlay.png")  # what write_outputs names its files
# What one image may fail with (unreadable, undecodable, too large for memory) without
# stopping the others; torch reports allocation failures as RuntimeError.
IMAGE_ERRORS = (ValueError, RuntimeError, MemoryError)


@dataclass(frozen=True)
class PredictionOutcome:
    """What became of one input: its outputs, or why there are none."""

    source: Path
    outputs: tuple[Path, ...] = ()
    error: str | None = None
    classes_present: tuple[int, ...] = ()


# -- inputs and outputs --------------------------------------------------------------
def collect_inputs(paths: Sequence[str | os.PathLike], *,
                   out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Files as given (whatever their suffix: an unreadable one is reported later), and
    the entries of folders named like images (by suffix, sorted, not recursive).

    A folder's entries named like images that are no readable file (a folder, a broken
    symlink) are kept, so that they are reported as failed rather than skipped unseen;
    macOS metadata files (``._name``) are left out, and so are this job's own outputs
    (``*_classes.png``, ``*_overlay.png``) in ``out_dir``, so that an output folder used
    as input again does not get predictions of predictions.

    Raises:
        FileNotFoundError: nothing to predict on: every path is missing or an empty folder.
    """
    out_dir = Path(out_dir).resolve() if out_dir is not None else None
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            own_outputs = out_dir is not None and path.resolve() == out_dir
            found += sorted(p for p in path.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("._")
                            and not (own_outputs and p.name.endswith(OUTPUT_SUFFIXES)))
        else:
            found.append(path)  # a missing file becomes a reported failure, not a crash
    if not any(os.path.lexists(path) for path in found):
        raise FileNotFoundError(f"no images found in {', '.join(map(str, paths))} (folders are "
                                f"searched for {', '.join(IMAGE_SUFFIXES)})")
    return list(dict.fromkeys(found))  # a file named twice is predicted once


def output_stems(sources: Sequence[Path]) -> list[str]:
    """The output name of each source: its stem; ``stem_suffix`` where two sources share
    a stem (``a.jpg``, ``a.png``); numbered on top where even that repeats (the same
    file name in two folders). No output overwrites another."""
    stems = Counter(source.stem for source in sources)
    names = [f"{s.stem}_{s.suffix.lstrip('.').lower()}" if stems[s.stem] > 1 else s.stem
             for s in sources]
    repeats, seen = Counter(names), Counter()
    numbered = []
    for name in names:
        seen[name] += 1
        numbered.append(f"{name}_{seen[name]}" if repeats[name] > 1 else name)
    return numbered


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS,
                 name: str | os.PathLike = "image") -> np.ndarray:
    """Image file bytes -> ``uint8 (H, W, 3)`` RGB as a viewer shows it.

    EXIF orientation is applied (phone photos); grey, palette, RGBA (alpha dropped),
    CMYK and 16-bit images are converted to 8-bit RGB; animations give their first frame.
    Raises DataError naming ``name`` with the decoder's reason when the bytes are no
    readable image, and before decoding when the header says more than ``max_pixels``.
    """
    img = decoded_image(name, "image", max_pixels, content=data)
    try:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit grey: keep the top byte
            values = np.asarray(img, dtype=np.uint32) >> (8 if img.mode != "I" else 0)
            img = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except DECODE_ERRORS as exc:
        raise DataError(name, f"cannot decode image (corrupt or truncated file?): {exc}") from None


def render(parser: SceneParser, data: bytes, *, alpha: float = 0.5,
           options: Mapping | None = None, max_pixels: int = MAX_IMAGE_PIXELS,
           progress: Progress | None = None) -> tuple[bytes, bytes, tuple[int, ...]]:
    """Predict on one image file's bytes; returns (class-id PNG, overlay PNG, class ids
    present). ``options`` are :meth:`SceneParser.predict`'s tile/overlap/scales/flip and
    resolution (default: ``parser.working_size``; None: full resolution)."""
    image = decode_image(data, max_pixels)
    options = {"resolution": parser.working_size, **(options or {})}
    classes = parser.predict(image, **options, progress=progress)
    classes_png = png_bytes(class_id_image(classes, parser.palette))
    overlay_png = png_bytes(overlay(image, classes, parser.palette, parser.classes, alpha=alpha))
    return classes_png, overlay_png, tuple(int(c) for c in np.unique(classes))


def write_outputs(out_dir: Path, stem: str, classes_png: bytes, overlay_png: bytes
                  ) -> tuple[Path, Path]:
    """``<stem>_classes.png`` and ``<stem>_overlay.png``, each written atomically."""
    paths = (out_dir / f"{stem}_classes.png", out_dir / f"{stem}_overlay.png")
    for path, data in zip(paths, (classes_png, overlay_png)):
        with atomic_file(path) as tmp:
            tmp.write_bytes(data)
    return paths


def failure_reason(exc: BaseException) -> str:
    """Why an image failed, without its name (its outcome carries the source)."""
    if isinstance(exc, DataError):
        return exc.problem
    return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"


def read_source(source: Path) -> bytes:
    try:
        return source.read_bytes()
    except FileNotFoundError:
        if source.is_symlink():
            raise ValueError(f"broken symlink (to {os.readlink(source)})") from None
        raise ValueError("file not found") from None
    except IsADirectoryError:
        raise ValueError("is a folder, not an image") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None


# -- here ----------------------------------------------------------------------------
class TileBar:
    """A :data:`~pdml_ray.inference.Progress` callback drawing one tqdm bar per image, of
    its windows and of the way through each forward pass (the image bar alone sat at 0/1
    for minutes on a large photo at full resolution). ``delay``: seconds an image must
    take before its bar shows, so quick images do not flash one each."""

    def __init__(self, *, delay: float = 1.0, **tqdm_options):
        self.options = {"unit": "window", "leave": False, "delay": delay,
                        "bar_format": "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
                        **tqdm_options}
        self.bar = None

    def __call__(self, done: float, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None or self.bar.total != total or done < self.bar.n:
            self.close()
            windows = f"{total} window{'s' if total > 1 else ''}"
            self.bar = tqdm(total=total, desc=f"this image ({windows})", **self.options)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def predict_local(parser: SceneParser, sources: Sequence[Path], out_dir: Path, *,
                  alpha: float = 0.5, options: Mapping | None = None,
                  max_pixels: int = MAX_IMAGE_PIXELS, progress: Progress | None = None
                  ) -> Iterator[list[PredictionOutcome]]:
    """Predict image by image in this process; yields ``[outcome]`` after each image.
    ``progress(done, total)`` counts the windows of each image, moving on within each
    forward pass (:meth:`SceneParser.probabilities`)."""
    for source, stem in zip(sources, output_stems(sources)):
        try:
            classes_png, overlay_png, present = render(parser, read_source(source), alpha=alpha,
                                                       options=options, max_pixels=max_pixels,
                                                       progress=progress)
        except IMAGE_ERRORS as exc:
            yield [PredictionOutcome(source, error=failure_reason(exc))]
            continue
        outputs = write_outputs(out_dir, stem, classes_png, overlay_png)
        yield [PredictionOutcome(source, outputs, classes_present=present)]
