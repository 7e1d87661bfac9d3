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

import numpy as np

from pdml_ray.data.base import SegmentationDataset
from pdml_ray.data.catalog import dataset_class
from pdml_ray.data.errors import DataError
from pdml_ray.data.io import file_problem, image_size
from pdml_ray.data.points import PointTable, read_points, write_points

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


def import_point_table(path: str | os.PathLike, dataset: SegmentationDataset) -> PointTable:
    """Read a user's points and check them against ``dataset``: known image ids, class
    range, every point inside its image, and the image sizes a labelling tool recorded.

    The file is told apart by content: a Label Studio JSON export, a CVAT for images 1.1
    XML export (class names mapped through the dataset's classes), or this project's own
    Parquet, CSV or JSON (:func:`read_points`).
    """
    table, tool_sizes = read_clicks(path, dataset.classes)
    dataset.check_points(table)
    _check_tool_sizes(table.source, tool_sizes, dataset)  # before bounds: it says why
    dataset.check_points(table, bounds=True)
    generation: dict = {"imported_from": Path(path).name}
    if "format" in table.metadata:
        generation["format"] = table.metadata["format"]
    if table.duplicates_dropped:
        generation["duplicates_dropped"] = table.duplicates_dropped
    return table.with_metadata({"dataset": dataset.name, "split": dataset.split,
                                "classes": list(dataset.classes), "num_images": len(dataset),
                                "generation": generation})


def _check_tool_sizes(source: str, sizes: dict[str, tuple[int, int]],
                      dataset: SegmentationDataset) -> None:
    """A tool that saw an image at another size placed its points on other pixels."""
    paths = {record.image_id: record.image_path for record in dataset.all_records}
    for image_id, seen in sizes.items():
        actual = image_size(paths[image_id], dataset.max_image_pixels)
        if seen != actual:
            raise DataError(source, f"image {image_id}: the labelling tool saw it as "
                                    f"{seen[1]}x{seen[0]} but it is {actual[1]}x{actual[0]} "
                                    f"(WxH); its points would land on other pixels")


def merge_imports(tables: Sequence[PointTable], dataset: SegmentationDataset) -> PointTable:
    """Several imported tables as one (the clicks a split had, and a labelling round's):
    exact repeats are dropped; one pixel given two classes by two files is refused."""
    if len(tables) == 1:
        return tables[0]
    rows: dict[str, list[np.ndarray]] = {}
    for table in tables:
        for image_id in table.image_ids:
            rows.setdefault(image_id, []).append(table.for_image(image_id))
    sources = [Path(table.source).name for table in tables]
    merged = PointTable({k: np.concatenate(v) for k, v in rows.items()}, source=" + ".join(
        table.source for table in tables))
    dropped = merged.duplicates_dropped + sum(t.duplicates_dropped for t in tables)
    generation: dict = {"imported_from": sources}
    if dropped:
        generation["duplicates_dropped"] = dropped
    merged = merged.with_metadata({"dataset": dataset.name, "split": dataset.split,
                                   "classes": list(dataset.classes), "num_images": len(dataset),
                                   "generation": generation})
    merged.duplicates_dropped = dropped  # what describe_points reports
    return merged


def import_points(dataset: str, root: str | os.PathLike, split: str, out: str | os.PathLike,
                  paths: Sequence[str | os.PathLike]) -> tuple[PointTable, SegmentationDataset]:
    """Import the points of ``paths`` (merged when several: :func:`merge_imports`), check
    them against the split and write them as Parquet to ``out``; returns the table as
    written and the dataset it belongs to (``jobs.prepare_points --import``)."""
    data = dataset_class(dataset)(root, split)
    table = merge_imports([import_point_table(path, data) for path in paths], data)
    return write_points(out, table), data
