"""Points imported from whatever file a team has, told apart by content, not by name:

- ``<`` first: CVAT for images 1.1 XML;
- ``[`` first: a Label Studio JSON export (a list of tasks);
- anything else: this project's own points files (``read_points``: Parquet, CSV
  ``image_id,y,x,class_id``, JSON ``{image_id: [{"y", "x", "cls"}]}``).

Class names of the tools' files map through the dataset's class list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from pdml_ray.data.errors import DataError
from pdml_ray.data.io import file_problem
from pdml_ray.data.points import PointTable, read_points

from .cvat import read_cvat
from .label_studio import read_label_studio
from .tool_clicks import to_point_table

BYTE_ORDER_MARK = b"\xef\xbb\xbf"


def detect_format(content: bytes) -> str:
    """``"cvat"``, ``"label-studio"`` or ``"points"`` (this project's own files)."""
    if content.startswith(b"PAR1"):  # Parquet's magic number
        return "points"
    start = content[len(BYTE_ORDER_MARK):] if content.startswith(BYTE_ORDER_MARK) else content
    start = start.lstrip()[:1]
    return {b"<": "cvat", b"[": "label-studio"}.get(start, "points")


def read_clicks(path: str | os.PathLike, classes: Sequence[str]
                ) -> tuple[PointTable, dict[str, tuple[int, int]]]:
    """The points of ``path`` in the dataset's class ids, and the ``(H, W)`` each tool
    recorded per image (empty for this project's own files, which record none).

    Raises DataError naming the file (see :func:`read_points` and the readers).
    """
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise DataError(path, f"points file {problem}")
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc}") from None
    kind = detect_format(content)
    if kind == "points":
        return read_points(path), {}
    if kind == "cvat":
        clicks = read_cvat(content, str(path))
    else:
        try:
            tasks = json.loads(content.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DataError(path, f"cannot read JSON: {exc}") from None
        clicks = read_label_studio(tasks, str(path))
    return to_point_table(clicks, classes), clicks.sizes
