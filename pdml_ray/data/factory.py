"""Datasets from the typed config: the one entry point the training service calls."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..config import DataConfig
from .base import SegmentationDataset
from .errors import DataError
from .io import atomic_directory
from .points import PointTable, write_points
from .prepare import generate_point_table
from .catalog import dataset_class
from .synthetic import SyntheticDataset, generation_settings, read_scene_info, write_scenes
from .transforms import train_transform as make_train_transform

POINTS_FILENAME = "points_train.parquet"


def points_path(data_cfg: DataConfig) -> Path:
    """The train points file: ``data_cfg.points_file``, else ``<root>/points_train.parquet``."""
    return Path(data_cfg.points_file or Path(data_cfg.root) / POINTS_FILENAME)


def build_dataset(data_cfg: DataConfig, split: str, *,
                  points: PointTable | str | os.PathLike | None = None,
                  train_transform: bool = True, augment_seed: int = 0) -> SegmentationDataset:
    """The ``split`` ("train", "val" or "test") of ``data_cfg.dataset`` under ``data_cfg.root``.

    Train: points from ``points`` (default: :func:`points_path`), the paired random
    scale/crop/flip transform when ``train_transform`` (items then all have the crop size;
    without it they keep their size: batch them with ``pad_collate``), each sample's draw
    seeded by ``augment_seed``, the epoch and its index. Val and test: original sizes,
    the first ``max_val_images`` images (0 = all); only the synthetic scenes have a
    labelled test split (another generator seed than train and val). Synthetic scenes are generated first if
    the root holds none (:func:`ensure_synthetic`). Relative paths resolve against the
    current directory: pass a config through ``config.resolve_paths`` first.
    """
    cls = dataset_class(data_cfg.dataset)
    if issubclass(cls, SyntheticDataset):
        ensure_synthetic(data_cfg)
    elif split == "test":
        raise DataError(data_cfg.root, f"{data_cfg.dataset} has no labelled test split here; "
                                       f"evaluate on val")
    if split != "train":
        return cls(data_cfg.root, split, points=points, max_images=data_cfg.max_val_images,
                   max_image_pixels=data_cfg.max_image_pixels)
    if points is None:
        points = points_path(data_cfg)
        if not points.is_file():
            raise DataError(points, "points file not found; create it with `python -m "
                                    f"jobs.prepare_points --dataset {data_cfg.dataset} --root "
                                    f"{data_cfg.root} --split train --out {points}`")
    transform = None
    if train_transform:
        transform = make_train_transform(crop_size=data_cfg.crop_size, scale_min=data_cfg.scale_min,
                                         scale_max=data_cfg.scale_max, hflip=data_cfg.hflip)
    return cls(data_cfg.root, "train", points=points, transform=transform,
               max_image_pixels=data_cfg.max_image_pixels, augment_seed=augment_seed)


def ensure_synthetic(data_cfg: DataConfig) -> Path:
    """Generate the synthetic scenes and the train points file unless they exist.

    Scenes (``synthetic_train/val/size/seed``) are generated into a temporary folder
    beside ``data_cfg.root`` and renamed into place, together with the points file when
    it lives in the root: processes racing here (several Ray workers) never see a half-
    written dataset, and the losers of the race use the winner's. Returns the root.
    """
    root = Path(data_cfg.root)
    points_file = points_path(data_cfg)
    cls = dataset_class(data_cfg.dataset)
    settings = generation_settings(train=data_cfg.synthetic_train, val=data_cfg.synthetic_val,
                                   size=data_cfg.synthetic_size, seed=data_cfg.synthetic_seed,
                                   version=cls.generator_version, test=data_cfg.synthetic_test,
                                   test_seed=data_cfg.synthetic_test_seed)
    if not (root / "classes.json").is_file():
        if root.is_dir() and any(root.iterdir()):
            raise DataError(root, "holds files but no generated scenes (classes.json); point "
                                  "data.root at an empty or new folder")
        try:
            with atomic_directory(root) as tmp:
                write_scenes(tmp, **settings)
                if points_file.parent.resolve() == root.resolve():
                    table = generate_point_table(cls(tmp, "train"),
                                                 seed=data_cfg.synthetic_seed)
                    write_points(tmp / points_file.name, table)
        except FileExistsError:
            pass  # another process generated them first; check and use theirs below
    generated = read_scene_info(root, cls.classes).get("generation")
    if generated != settings:
        warnings.warn(f"{root}: using scenes generated with {generated}, not the configured "
                      f"{settings}; remove the folder to regenerate", stacklevel=2)
    if not points_file.is_file():
        table = generate_point_table(cls(root, "train"), seed=data_cfg.synthetic_seed)
        write_points(points_file, table)
    return root
