"""What a labelling tool's export says, before it meets a dataset: clicks with class
names, in continuous pixel coordinates, and the image sizes the tool saw.

Both tools place a point anywhere in an image, in continuous coordinates whose origin
is the image's top-left corner; the pixel that holds point (x, y) is
``(floor(y), floor(x))``. A point on the far edge (x = W) belongs to the last pixel;
a point outside the image is refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pdml_ray.data.errors import DataError
from pdml_ray.data.points import PointTable, shown_id


@dataclass
class ToolClicks:
    """Clicks read from a tool's file: ``(image_id, y, x, class name)`` in continuous
    pixels, and ``sizes[image_id] = (H, W)`` as the tool recorded them."""

    source: str
    format: str
    clicks: list[tuple[str, float, float, str]] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add_size(self, image_id: str, size: tuple[int, int], where: str) -> None:
        height, width = size
        if not (height >= 1 and width >= 1):
            raise DataError(self.source, f"{where}: image size {width}x{height} (WxH) is not "
                                         f"a positive size")
        known = self.sizes.setdefault(image_id, size)
        if known != size:
            raise DataError(self.source, f"{where}: image {shown_id(image_id)} is given as "
                                         f"{width}x{height} here and {known[1]}x{known[0]} "
                                         f"elsewhere (WxH)")


def pixel_of(coordinate: float, length: int) -> int:
    """The pixel (0..length-1) that holds a continuous coordinate in [0, length]."""
    return min(int(math.floor(coordinate)), length - 1)


def to_point_table(clicks: ToolClicks, classes: Sequence[str]) -> PointTable:
    """The clicks as a PointTable in the dataset's class ids.

    Raises DataError naming the file on: a class name not in ``classes`` (the first one
    met, with the image it labels), a point outside its image, or no clicks at all.
    """
    index = {name: cls for cls, name in enumerate(classes)}
    rows = []
    for image_id, y, x, name in clicks.clicks:
        if name not in index:
            raise DataError(clicks.source, f"unknown class {name!r} (image {shown_id(image_id)}); "
                                           f"the dataset's classes are {', '.join(classes)}")
        height, width = clicks.sizes[image_id]
        if not (0 <= y <= height and 0 <= x <= width):
            raise DataError(clicks.source, f"image {shown_id(image_id)}: point (x={x:g}, y={y:g}) "
                                           f"lies outside the {width}x{height} (WxH) image")
        rows.append((image_id, pixel_of(y, height), pixel_of(x, width), index[name]))
    if not rows:
        raise DataError(clicks.source, f"{clicks.format} file holds no points")
    grouped: dict[str, list[tuple[int, int, int]]] = {}
    for image_id, y, x, cls in rows:
        grouped.setdefault(image_id, []).append((y, x, cls))
    metadata = {"imported_from": os.path.basename(clicks.source), "format": clicks.format}
    return PointTable({k: np.asarray(v, dtype=np.int64) for k, v in grouped.items()},
                      metadata, clicks.source)
