"""Datasets, point labels, paired transforms and the synthetic scene generator.

The training service needs only :func:`build_dataset` (and :func:`pad_collate` for
batches of different sizes); :func:`dataset_class` gives class names and palettes
without building a dataset.
"""

from .ade20k import ADE20KDataset
from .base import ImageRecord, SegmentationDataset, pad_collate
from .errors import DataError
from .factory import build_dataset, ensure_synthetic, points_path
from .pascal_context import PascalContextDataset
from .points import PointTable, generate_points, read_points, write_points
from .prepare import describe_points, generate_point_table, prepare_points
from .catalog import DATASETS, dataset_class
from .synthetic import SyntheticDataset, describe_scenes, generate_scenes
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, rasterize_points, to_model_input,
                         train_transform)

__all__ = [
    "ADE20KDataset", "DATASETS", "DataError", "IMAGENET_MEAN", "IMAGENET_STD", "ImageRecord",
    "PascalContextDataset", "PointTable", "SegmentationDataset", "SyntheticDataset",
    "build_dataset", "dataset_class", "describe_points", "describe_scenes", "ensure_synthetic",
    "generate_point_table", "generate_points", "generate_scenes", "pad_collate", "points_path",
    "prepare_points", "rasterize_points", "read_points", "to_model_input", "train_transform",
    "write_points",
]
