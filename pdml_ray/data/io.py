"""Reading images and label maps with clear errors, and writing files atomically.

Every reader fully decodes its file (``Image.load()``), so a truncated JPEG or PNG fails
here, naming the file, instead of later inside a DataLoader worker.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .errors import DataError

# Single-channel PNG modes a label or instance map may use: 8-bit grey or palette indices,
# 16-bit grey, 32-bit integer.
LABEL_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I")

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _open_decoded(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    try:
        with Image.open(path) as img:  # closes the file, also when decoding fails
            img.load()  # decode everything now: truncated files fail here, not in a worker
    except _DECODE_ERRORS as exc:
        raise DataError(path, f"cannot decode {what} (corrupt or truncated file?): {exc}") from None
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB image as ``uint8 (H, W, 3)``; grey or palette images are converted to RGB."""
    path = Path(path)
    img = _open_decoded(path, "image")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_label(path: str | os.PathLike, what: str = "label map") -> np.ndarray:
    """A single-channel label (or instance) PNG as ``int64 (H, W)``, values as stored.

    A palette ("P") PNG yields its palette indices, as the ADE20K and PASCAL tools expect.
    Colour PNGs are refused: their values are not class ids, and guessing a conversion
    would silently train on wrong labels.
    """
    path = Path(path)
    img = _open_decoded(path, what)
    if img.mode not in LABEL_MODES:
        raise DataError(path, f"{what} PNG has mode {img.mode}; expected a single-channel "
                              f"PNG of class ids (mode {', '.join(LABEL_MODES)})")
    values = np.asarray(img)
    if values.ndim != 2:
        raise DataError(path, f"{what} has shape {values.shape}; expected (H, W)")
    if values.dtype.kind == "i" and values.size and values.min() < 0:
        raise DataError(path, f"{what} holds negative values")
    return values.astype(np.int64)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` read from the file header only (no decoding): cheap bounds checks."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image not found")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except _DECODE_ERRORS as exc:
        raise DataError(path, f"cannot read image header: {exc}") from None
    return height, width


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``.

    On an exception the temporary file is removed and an existing ``path`` is left as it
    was: readers never see a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it is renamed to ``path``.

    Several processes may race to create the same folder: exactly one rename wins, the
    others raise :class:`FileExistsError` (their temporary folders are removed). An
    existing empty ``path`` is replaced; a non-empty one is never touched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(errno.EEXIST, "already exists and is not empty",
                                      str(path)) from None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
