"""CVAT's "CVAT for images 1.1" XML export: ``<points>`` shapes with a label, on images.

    <annotations>
      <version>1.1</version>
      <image id="0" name="images/training/scene_0001.jpg" width="96" height="96">
        <points label="ball" source="manual" occluded="0" points="40.50,12.25" z_order="0"/>
      </image>
    </annotations>

``points`` holds one or more ``x,y`` pairs separated by ``;``, in continuous pixel
coordinates of the image; each pair is one click. An image's id is the file stem of
its ``name``. Other shapes (boxes, polygons, tags) are left alone. A file declaring a
DTD is refused: exports have none, and entity definitions are how XML bombs work.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import PurePosixPath

from pdml_ray.data.errors import DataError

from .tool_clicks import ToolClicks

FORMAT = "CVAT for images"
_DTD = re.compile(rb"<!DOCTYPE|<!ENTITY", re.IGNORECASE)


def read_cvat(content: bytes, source: str) -> ToolClicks:
    """The clicks of a CVAT for images XML export (its bytes, read from ``source``)."""
    if _DTD.search(content):
        raise DataError(source, "XML with a DTD or entity declarations is refused (CVAT "
                                "exports have none)")
    try:
        root = ElementTree.fromstring(content)
    except ElementTree.ParseError as exc:
        raise DataError(source, f"cannot read XML: {exc}") from None
    if root.tag != "annotations":
        raise DataError(source, f"XML root is <{root.tag}>; a CVAT for images export has "
                                f"<annotations>")
    if root.find("track") is not None:
        raise DataError(source, "this is a CVAT for video export (it has <track>s); export "
                                "the task as CVAT for images 1.1")
    found = ToolClicks(source, FORMAT)
    for image in root.iter("image"):
        name = image.get("name") or ""
        where = f"image {name!r}"
        image_id = PurePosixPath(name.replace("\\", "/")).stem
        if not image_id:
            raise DataError(source, f"an <image> without a name (id {image.get('id')!r})")
        shapes = image.findall("points")
        if not shapes:
            continue
        try:
            size = (int(image.get("height", "")), int(image.get("width", "")))
        except ValueError:
            raise DataError(source, f"{where}: width and height must be whole numbers, got "
                                    f"{image.get('width')!r} and {image.get('height')!r}") from None
        found.add_size(image_id, size, where)
        for shape in shapes:
            label = shape.get("label")
            if not label:
                raise DataError(source, f"{where}: <points> without a label")
            for pair in (shape.get("points") or "").split(";"):
                try:
                    x, y = (float(v) for v in pair.split(","))
                except ValueError:
                    raise DataError(source, f"{where}: points must be 'x,y' pairs separated by "
                                            f"';', got {shape.get('points')!r}") from None
                found.clicks.append((image_id, y, x, label))
    return found
