"""Point files for a dataset split, generated from the dense labels.

This is what ``python -m jobs.prepare_points`` runs (with ``--import``, the labelling
tools' files are read by :mod:`pdml_ray.labelling.tool_import` instead).
"""

from __future__ import annotations

import os
import zlib

import numpy as np
from tqdm import tqdm

from .base import SegmentationDataset
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


def prepare_points(dataset: str, root: str | os.PathLike, split: str, out: str | os.PathLike, *,
                   seed: int = 0, strategy: str = "random",
                   progress: bool = True) -> tuple[PointTable, SegmentationDataset]:
    """Generate the points of a split from its dense labels and write them as Parquet to
    ``out`` (importing a team's clicks instead: :func:`pdml_ray.labelling.tool_import.
    import_points`). Returns the table as written and the dataset it belongs to."""
    data = dataset_class(dataset)(root, split)
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
