"""Where a split's images are read from: local paths, or the same file names under a
folder URI that pyarrow understands (``s3://bucket/images/training``, ``gs://...``,
``file:///...``), so a cluster's actors read object storage directly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import pyarrow.fs as pafs

from pdml_ray.data.errors import DataError
from pdml_ray.data.io import MAX_IMAGE_PIXELS, read_image


@dataclass(frozen=True)
class ImageSource:
    """One image to score: its id (the file stem) and where it is, in ``filesystem``."""

    image_id: str
    path: str


def image_filesystem(images_from: str | None) -> tuple[pafs.FileSystem, str | None]:
    """The filesystem that serves the images and the folder inside it (None: the images'
    own local paths)."""
    if images_from is None:
        return pafs.LocalFileSystem(), None
    if "://" not in images_from:
        return pafs.LocalFileSystem(), str(Path(images_from).resolve())
    try:
        return pafs.FileSystem.from_uri(images_from)
    except (ValueError, OSError) as exc:
        raise DataError(images_from, f"cannot open this folder URI: {exc}") from None


def image_sources(local_paths: Sequence[Path], folder: str | None) -> list[ImageSource]:
    """Each image by id, at its local path or at its file name below ``folder``."""
    return [ImageSource(Path(path).stem, str(path) if folder is None
                        else str(PurePosixPath(folder) / Path(path).name))
            for path in local_paths]


def read_rgb(filesystem: pafs.FileSystem, path: str,
             max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image as uint8 ``(H, W, 3)``, pixels as stored (no EXIF rotation: labels are
    drawn on the stored grid). Raises DataError naming the file."""
    try:
        with filesystem.open_input_file(path) as file:
            content = file.read()
    except OSError as exc:
        raise DataError(path, f"cannot read image: {exc}") from None
    return read_image(path, max_pixels, content=content)
