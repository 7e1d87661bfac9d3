"""Reading images and label maps with clear errors, and writing files atomically.

Every reader fully decodes its file (``Image.load()``), so a truncated JPEG or PNG fails
here, naming the file, instead of later inside a DataLoader worker.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import DataConfig
from .errors import DataError

# Single-channel PNG modes a label or instance map may use: 8-bit grey or palette indices,
# 16-bit grey, 32-bit integer.
LABEL_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I")

# The most pixels an image or label map may have unless a config says otherwise
# (data.max_image_pixels, whose default this is): decoding one image of 10000 x 10000 took
# 6.2 GB on the way to a training item. Checked on the header, before anything is decoded.
MAX_IMAGE_PIXELS = DataConfig.max_image_pixels

# What Pillow raises for a file it cannot decode (besides UnidentifiedImageError, an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_EXIF_ORIENTATION = 0x0112


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a readable regular file, or None if it is one.

    Tells apart what ``Path.is_file()`` lumps together as False: ``"not found"``, ``"is a
    broken symlink (to TARGET)"``, ``"is a symlink loop"``, ``"is a folder, not a file"``.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop (the link leads back to itself)"
        if path.is_symlink():
            return f"is a broken symlink (to {os.readlink(path)})"
        return "not found"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    return None


def pixel_cap_problem(size: tuple[int, int], what: str,
                      max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why an image of ``size`` ``(W, H)`` (Pillow's order) is refused, or None if it has
    at most ``max_pixels`` pixels; the message names the key that raises the cap."""
    width, height = size
    if width * height <= max_pixels:
        return None
    return (f"{what} is {height}x{width} (HxW), {width * height} pixels: more than "
            f"data.max_image_pixels = {max_pixels}; downscale it, or raise "
            f"data.max_image_pixels (--set data.max_image_pixels=N)")


def bomb_problem(exc: Image.DecompressionBombError, what: str,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> str:
    """The message for an image Pillow refuses to open at all (over twice its own
    ``Image.MAX_IMAGE_PIXELS``, about 179 megapixels); no config raises that limit."""
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if max_pixels < pillow_limit:
        return f"{what} has more than data.max_image_pixels = {max_pixels} pixels: {exc}"
    return (f"{what} has more pixels than Pillow opens (data.max_image_pixels = {max_pixels} "
            f"cannot raise that): {exc}")


@contextlib.contextmanager
def opened_image(path: str | os.PathLike, what: str, unreadable: str,
                 max_pixels: int = MAX_IMAGE_PIXELS, *,
                 content: bytes | None = None) -> Iterator[Image.Image]:
    """The image with its header read and its size checked against ``max_pixels``: the
    one place where what Pillow raises on opening an image becomes a DataError naming it
    (``unreadable`` starts the message when the header cannot be read).

    ``content``: the file's bytes, already read (from object storage, or by a driver
    that ships them to Ray workers); ``path`` then only names them in messages.
    """
    if content is None:
        problem = file_problem(path)
        if problem is not None:
            raise DataError(path, f"{what} {problem}")
    with warnings.catch_warnings():
        # Pillow warns from 89 megapixels; the cap is checked on the header below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path if content is None else io.BytesIO(content))
        except UnidentifiedImageError:  # Pillow's message would repeat the path
            raise DataError(path, f"{unreadable}: not an image file (unknown format or "
                                  "corrupt header)") from None
        except Image.DecompressionBombError as exc:
            raise DataError(path, bomb_problem(exc, what, max_pixels)) from None
        except DECODE_ERRORS as exc:
            raise DataError(path, f"{unreadable}: {exc}") from None
    with img:  # closes the file, also when decoding fails
        problem = pixel_cap_problem(img.size, what, max_pixels)
        if problem is not None:
            raise DataError(path, problem)
        yield img


def decoded_image(path: str | os.PathLike, what: str = "image",
                  max_pixels: int = MAX_IMAGE_PIXELS, *,
                  content: bytes | None = None) -> Image.Image:
    """The image decoded in full, so that a truncated file fails here, naming ``path``,
    not later in a worker (``content``: its bytes, as for :func:`opened_image`)."""
    unreadable = f"cannot decode {what} (corrupt or truncated file?)"
    with opened_image(path, what, unreadable, max_pixels, content=content) as img:
        try:
            img.load()
        except DECODE_ERRORS as exc:
            raise DataError(path, f"{unreadable}: {exc}") from None
    return img


def read_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS, *,
               content: bytes | None = None) -> np.ndarray:
    """An RGB image as ``uint8 (H, W, 3)``; grey or palette images are converted to RGB.
    Images of more than ``max_pixels`` pixels are refused (``data.max_image_pixels``).
    ``content``: the file's bytes when they were read elsewhere (object storage).

    Pixels are taken as stored: an EXIF orientation tag is not applied, because label maps
    are drawn on the stored pixel grid (see :func:`exif_orientation`).
    """
    img = decoded_image(path, "image", max_pixels, content=content)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_label(path: str | os.PathLike, what: str = "label map",
               max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A single-channel label (or instance) PNG as ``int64 (H, W)``, values as stored.

    A palette ("P") PNG yields its palette indices, as the ADE20K and PASCAL tools expect.
    Colour PNGs are refused: their values are not class ids, and guessing a conversion
    would silently train on wrong labels. So are files that are not PNG data whatever
    their name (a JPEG saved as ``.png``): lossy compression changes class ids.
    """
    path = Path(path)
    img = decoded_image(path, what, max_pixels)
    if img.format != "PNG":
        lossy = " (lossy compression has changed its class ids)" if img.format == "JPEG" else ""
        raise DataError(path, f"{what} is {img.format} data, not PNG{lossy}; save label maps "
                              f"as PNG")
    if img.mode not in LABEL_MODES:
        raise DataError(path, f"{what} PNG has mode {img.mode}; expected a single-channel "
                              f"PNG of class ids (mode {', '.join(LABEL_MODES)})")
    values = np.asarray(img)
    if values.ndim != 2:
        raise DataError(path, f"{what} has shape {values.shape}; expected (H, W)")
    if values.dtype.kind == "i" and values.size and values.min() < 0:
        raise DataError(path, f"{what} holds negative values")
    return values.astype(np.int64)


def image_size(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(H, W)`` read from the file header only (no decoding): cheap bounds checks."""
    with opened_image(Path(path), "image", "cannot read image header", max_pixels) as img:
        width, height = img.size
    return height, width


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation tag of an image file (1 = as stored; 5-8 = a viewer shows it
    turned by 90 degrees), read from the header; 1 if it has none or cannot be read."""
    try:
        with Image.open(path) as img:
            return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except (*DECODE_ERRORS, TypeError):
        return 1


def exif_turn_note(image_path: str | os.PathLike, image_hw: tuple[int, int],
                   label_hw: tuple[int, int]) -> str:
    """What to add to a size mismatch between an image of ``image_hw`` ``(H, W)`` stored
    pixels and a label map of ``label_hw``: when the image's EXIF orientation turns it by
    90 degrees and the label map has the turned size, ``"; the image carries EXIF
    orientation 6, ..."`` (the label map was drawn on what a viewer shows); else ``""``."""
    orientation = exif_orientation(image_path)
    (height, width), turned = image_hw, tuple(label_hw) == tuple(image_hw)[::-1]
    if orientation not in (5, 6, 7, 8) or not turned:
        return ""
    return (f"; the image carries EXIF orientation {orientation}, so viewers show it turned "
            f"by 90 degrees ({width}x{height}) while its stored pixels are not: label the "
            f"stored pixels, or save the image with the rotation applied "
            f"(PIL.ImageOps.exif_transpose)")


def check_output_folder(path: str | os.PathLike, what: str = "the output folder") -> Path:
    """Raise DataError unless ``path`` is a folder, or can be made one, that this process
    can write into. Creates nothing (a probe file is written and removed in the nearest
    existing folder), so a job can check its output before any long work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(path, f"is a file; {what} must be a folder")
    if not path.exists() and os.path.lexists(path):
        raise DataError(path, f"{what} is a broken symlink (to {os.readlink(path)})")
    existing = path
    while not existing.exists() and not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(path, f"cannot create {what} there: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".pdml_write_check.")
    except OSError as exc:
        where = "" if existing == path else f" (in {existing})"
        raise DataError(path, f"cannot write {what} there{where}: "
                              f"{exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    return path


def current_umask() -> int:
    """This process's umask, read without changing it where Linux tells it
    (``/proc/self/status``); elsewhere set and put back at once."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_of_replaced(path: Path, default: int) -> int:
    """The permission bits a file written to ``path`` by ``open()`` would have: those of
    the file already there, else ``default`` less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return default & ~current_umask()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``.

    On an exception the temporary file is removed and an existing ``path`` is left as it
    was: readers never see a half-written file. The file gets the mode a plain ``open()``
    would give it (an existing file's own, else ``0666`` less the umask), not the
    owner-only mode of a temporary file: teammates on a shared filesystem can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _mode_of_replaced(path, 0o666))
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
    existing empty ``path`` is replaced; a non-empty one is never touched. The folder gets
    the mode ``os.mkdir`` would give it (``0777`` less the umask), not ``mkdtemp``'s 0700.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        tmp.chmod(0o777 & ~current_umask())  # as os.mkdir would, not mkdtemp's 0700
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
