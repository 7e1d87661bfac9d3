"""Point files for a dataset split: generate them from the dense labels, or import them.

This is what ``python -m jobs.prepare_points`` runs.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .base import SegmentationDataset
from .errors import DataError
from .io import image_size
from .points import PointTable, generate_points, write_points
from .catalog import dataset_class

# Table 2 of the paper: labelled pixels per training image.
PAPER_POINTS_PER_IMAGE = {"PASCAL-Context": 12.26, "ADE20K": 13.96}


def image_seed(seed: int, image_id: str) -> int:
    """A per-image seed that depends only on ``seed`` and the image id, not on order."""
    return zlib.crc32(f"{seed}/{image_id}".encode())


def generate_point_table(dataset: SegmentationDataset, *, seed: int = 0,
                         strategy: str = "random", progress: bool = False) -> PointTable:
    """One point per instance for every image of ``dataset`` (see :func:`generate_points`).

    Uses the dataset's instance maps when it has them, else 8-connected components of
    each class. The table's metadata records the dataset, split, classes and settings.
    """
    points = {}
    used_instances = False
    for index in tqdm(range(len(dataset)), desc=f"points {dataset.name}/{dataset.split}",
                      unit="image", disable=not progress):
        instances = dataset.load_instances(index)
        used_instances |= instances is not None
        image_id = dataset.records[index].image_id
        points[image_id] = generate_points(dataset.load_mask(index), instances,
                                           ignore_index=dataset.ignore_index,
                                           seed=image_seed(seed, image_id), strategy=strategy)
    source = "instance maps" if used_instances else "8-connected components"
    metadata = {
        "dataset": dataset.name, "split": dataset.split, "classes": list(dataset.classes),
        "num_images": len(dataset),
        "generation": {"strategy": strategy, "seed": seed, "instances": source},
    }
    return PointTable(points, metadata)


def import_point_table(path: str | os.PathLike, dataset: SegmentationDataset) -> PointTable:
    """Read a user's points and check them against ``dataset``: known image ids, class
    range, every point inside its image, and the image sizes a labelling tool recorded.

    The file is told apart by content: a Label Studio JSON export, a CVAT for images 1.1
    XML export (class names mapped through the dataset's classes), or this project's own
    Parquet, CSV or JSON (:func:`read_points`).
    """
    # Imported here: the labelling package sits above the data package and imports it.
    from pdml_ray.labelling.tool_import import read_clicks

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


def prepare_points(dataset: str, root: str | os.PathLike, split: str, out: str | os.PathLike, *,
                   seed: int = 0, strategy: str = "random",
                   import_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                   progress: bool = True) -> tuple[PointTable, SegmentationDataset]:
    """Generate (or import) the points of a split and write them as Parquet to ``out``.

    ``import_path``: one file, or several whose points are merged (:func:`merge_imports`).

    Returns the table as written and the dataset it belongs to.
    """
    data = dataset_class(dataset)(root, split)
    if import_path is not None:
        paths = [import_path] if isinstance(import_path, (str, os.PathLike)) else import_path
        table = merge_imports([import_point_table(path, data) for path in paths], data)
    else:
        table = generate_point_table(data, seed=seed, strategy=strategy, progress=progress)
    return write_points(out, table), data


def describe_points(table: PointTable, dataset: SegmentationDataset) -> str:
    """Points per image (against the paper's Table 2) and a per-class count table."""
    counts = np.array([table.points_per_image.get(image_id, 0) for image_id in dataset.image_ids])
    paper = ", ".join(f"{value} on {name}" for name, value in PAPER_POINTS_PER_IMAGE.items())
    dropped = (f"; {table.duplicates_dropped} exact duplicate point(s) dropped"
               if table.duplicates_dropped else "")
    lines = [
        f"{table.num_points} points in {len(counts)} {dataset.split} images of {dataset.name} "
        f"({int((counts == 0).sum())} without points{dropped})",
        f"points per image: mean {counts.mean():.2f}, min {counts.min()}, max {counts.max()} "
        f"(paper, Table 2: {paper})",
        "points per class:",
        f"  {'id':>4}  {'class':<20} {'points':>8} {'share':>7}",
    ]
    class_counts = table.class_counts
    for cls, name in enumerate(dataset.classes):
        n = class_counts.get(cls, 0)
        lines.append(f"  {cls:>4}  {name:<20} {n:>8} {100 * n / max(table.num_points, 1):6.1f}%")
    return "\n".join(lines)
