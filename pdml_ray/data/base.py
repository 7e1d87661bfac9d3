"""What every scene-parsing dataset here shares: listing, label decoding, points, items.

Subclasses declare ``name``, ``classes`` and ``palette`` once and say where their files
are (:meth:`SegmentationDataset.find_root`, :meth:`SegmentationDataset.list_records`);
``num_classes`` is derived. All three layouts store labels the ADE20K way: PNG value 0
is unlabelled and becomes ignore (255), value k is class k-1; a stored 255 is ignore too.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from pdml_ray.labels import IGNORE_INDEX

from .errors import DataError
from .io import (MAX_IMAGE_PIXELS, exif_turn_note, file_problem, image_size, read_image,
                 read_label)
from .points import PointTable, read_points, shown_id
from .transforms import Sample, points_to_sample, rasterize_points, to_model_input

SPLIT_FOLDERS = {"train": "training", "val": "validation", "test": "test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg")  # matched in any case: .JPG from cameras is common
LABEL_SUFFIX = ".png"


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split: its id (the file stem) and files."""

    image_id: str
    image_path: Path
    label_path: Path
    instance_path: Path | None = None


class SegmentationDataset(Dataset):
    """A split of a scene-parsing dataset as a torch ``Dataset``.

    Items of split ``"train"`` (after ``transform``, e.g. the paired training transform)::

        image         float32 (3, H, W)  ImageNet-normalised (see ``to_model_input``)
        point_labels  int64   (H, W)     255 except at the labelled points (class id)
        mask          int64   (H, W)     dense class ids, 255 = ignore
        image_index   int64   ()         position of the image in this dataset

    Items of split ``"val"``: ``image``, ``mask`` and ``image_index`` at the original size.

    Args:
        root: the dataset folder (its released layout, see the subclass).
        split: ``"train"``, ``"val"`` or ``"test"`` (the synthetic scenes' held-out split).
        points: train only: a :class:`PointTable` or the path of a points file, looked up
            by image id (the file stem). ``None`` gives all-255 point maps (full
            supervision needs no points).
        transform: maps a sample dict (see ``transforms``) to a sample dict; train only.
        max_images: keep only the first ``max_images`` images (sorted by id); 0 = all.
        max_image_pixels: images and label maps with more pixels are refused
            (``data.max_image_pixels``).
    """

    name: ClassVar[str] = ""
    classes: ClassVar[tuple[str, ...]] = ()
    palette: ClassVar[tuple[tuple[int, int, int], ...]] = ()
    num_classes: ClassVar[int] = 0
    ignore_index: ClassVar[int] = IGNORE_INDEX

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.num_classes = len(cls.classes)

    def __init__(self, root: str | os.PathLike, split: str, *,
                 points: PointTable | str | os.PathLike | None = None,
                 transform: Callable[..., Sample] | None = None,
                 max_images: int = 0, max_image_pixels: int = MAX_IMAGE_PIXELS,
                 augment_seed: int = 0) -> None:
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"split must be one of {tuple(SPLIT_FOLDERS)}, got {split!r}")
        if split != "train" and (points is not None or transform is not None):
            raise ValueError(f"points and transform apply to the train split only, not {split!r}")
        if max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images}")
        self.root = self.find_root(Path(root))
        self.split = split
        self.all_records = self.list_records()
        self.records: list[ImageRecord] = (self.all_records[:max_images] if max_images
                                           else self.all_records)
        self.points: PointTable | None = None
        if points is not None:
            self.points = points if isinstance(points, PointTable) else read_points(points)
            self.check_points(self.points)
            self._warn_images_without_points(self.points)
        self.transform = transform
        self.max_image_pixels = max_image_pixels
        # Each sample's random transform draws from its own generator, seeded by (seed,
        # epoch, index): a seed's crops do not depend on what else drew from torch's global
        # stream (model init, a projection head, loader processes). The epoch lives in
        # shared memory so that loader processes forked before set_epoch still see it.
        self.augment_seed = augment_seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's augmentations (call before iterating its loader)."""
        self._epoch.fill_(epoch)

    def sample_generator(self, index: int) -> torch.Generator:
        """The generator of sample ``index``'s random transform in the current epoch."""
        seed = np.random.SeedSequence([self.augment_seed, int(self._epoch), index])
        return torch.Generator().manual_seed(int(seed.generate_state(1, np.uint64)[0]))

    # -- layout, overridden per dataset ----------------------------------------------
    @classmethod
    def find_root(cls, root: Path) -> Path:
        """The folder holding the layout, given what the user pointed at."""
        return root

    def list_records(self) -> list[ImageRecord]:
        """The split's images sorted by id; raises DataError on an empty or broken split."""
        raise NotImplementedError

    # -- loading -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    @property
    def image_ids(self) -> list[str]:
        return [record.image_id for record in self.records]

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Stored PNG values -> class ids: 0 and 255 -> ignore, k in 1..N -> k-1."""
        bad = (raw > self.num_classes) & (raw != 255)
        if bad.any():
            values = ", ".join(str(v) for v in np.unique(raw[bad])[:5])
            raise DataError(path, f"label value(s) {values} outside 0..{self.num_classes} (0 and "
                                  f"255: ignore; {self.name} has {self.num_classes} classes)")
        mask = raw - 1
        mask[(raw == 0) | (raw == 255)] = self.ignore_index
        return mask

    def load_image(self, index: int) -> np.ndarray:
        """``uint8 (H, W, 3)`` RGB."""
        return read_image(self.records[index].image_path, self.max_image_pixels)

    def load_mask(self, index: int) -> np.ndarray:
        """``int64 (H, W)`` class ids, 255 = ignore."""
        path = self.records[index].label_path
        return self.decode_label(read_label(path, max_pixels=self.max_image_pixels), path)

    def load_instances(self, index: int) -> np.ndarray | None:
        """``int64 (H, W)`` instance ids (0 = none), or None if the dataset has no maps."""
        path = self.records[index].instance_path
        return None if path is None else read_label(path, "instance map", self.max_image_pixels)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask, checked to have the same size."""
        image, mask = self.load_image(index), self.load_mask(index)
        if image.shape[:2] != mask.shape:
            record = self.records[index]
            exif = exif_turn_note(record.image_path, image.shape[:2], mask.shape)
            raise DataError(record.label_path,
                            f"label map is {mask.shape[0]}x{mask.shape[1]} but image "
                            f"{record.image_path.name} is {image.shape[0]}x{image.shape[1]} "
                            f"(HxW){exif}")
        return image, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self.load_pair(index)
        image_index = torch.tensor(index, dtype=torch.int64)
        if self.split != "train":
            return {"image": to_model_input(image), "mask": torch.from_numpy(mask),
                    "image_index": image_index}
        image_id = self.records[index].image_id
        rows = np.zeros((0, 3), dtype=np.int64)
        if self.points is not None:
            rows = self.points.for_image(image_id)
            self.points.check_bounds(image_id, mask.shape)
        coords, classes = points_to_sample(rows)
        sample = {"image": to_model_input(image), "mask": torch.from_numpy(mask),
                  "points": coords, "point_classes": classes}
        if self.transform is not None:
            sample = self.transform(sample, generator=self.sample_generator(index))
        point_labels = rasterize_points(sample["points"], sample["point_classes"],
                                        tuple(sample["mask"].shape), self.ignore_index)
        return {"image": sample["image"].contiguous(), "point_labels": point_labels,
                "mask": sample["mask"].contiguous(), "image_index": image_index}

    # -- points ------------------------------------------------------------------------
    def check_points(self, table: PointTable, *, bounds: bool = False) -> None:
        """Raise DataError (naming the points file) if ``table`` names images this split
        does not have, uses other class names or ids outside the classes, or, with
        ``bounds``, holds a point outside its image (sizes read from the image headers;
        otherwise bounds are checked as each image is loaded)."""
        by_id = {record.image_id: record for record in self.all_records}
        unknown = [image_id for image_id in table.image_ids if image_id not in by_id]
        if unknown:
            raise DataError(table.source,
                            f"{len(unknown)} image id(s) not in the {self.name} {self.split} split "
                            f"at {self.root}: {', '.join(map(shown_id, unknown[:5]))}"
                            f"{', ...' if len(unknown) > 5 else ''}")
        if table.classes is not None and table.classes != self.classes:
            raise DataError(table.source, f"points are labelled with {len(table.classes)} classes "
                                          f"({', '.join(table.classes[:3])}, ...), not the "
                                          f"{self.num_classes} classes of {self.name}")
        table.check_classes(self.num_classes)
        if bounds:
            for image_id in table.image_ids:
                table.check_bounds(image_id, image_size(by_id[image_id].image_path,
                                                        self.max_image_pixels))

    def _warn_images_without_points(self, table: PointTable) -> None:
        without = sum(record.image_id not in table for record in self.records)
        if without:
            warnings.warn(f"{table.source}: {without} of {len(self.records)} {self.split} images "
                          f"have no points; their point maps are all {self.ignore_index}",
                          stacklevel=3)


def list_files(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    """``{stem: path}`` of the entries of ``folder`` whose suffix (in any case) is one of
    ``suffixes``. macOS metadata files (``._name``) are ignored; an entry named like an
    image that is no readable file (a folder, a broken symlink, a symlink loop) and two
    entries of one stem are refused, naming them."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("._") or path.suffix.lower() not in suffixes:
            continue
        problem = file_problem(path)
        if problem is not None:
            raise DataError(path, f"{what} {problem}")
        if path.stem in found:
            raise DataError(path, f"two {what}s share the id {path.stem}: "
                                  f"{found[path.stem].name} and {path.name}")
        found[path.stem] = path
    return found


def paired_records(image_dir: Path, label_dir: Path, *,
                   image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
                   instance_dir: Path | None = None) -> list[ImageRecord]:
    """Records of an images folder and a labels folder (``.png``) that pair files by stem."""
    for folder in (image_dir, label_dir, instance_dir):
        if folder is not None and not folder.is_dir():
            raise DataError(folder, "folder not found")
    images = list_files(image_dir, image_suffixes, "image")
    if not images:
        raise DataError(image_dir, f"no {' or '.join(image_suffixes)} images found: the split "
                                   f"is empty")
    labels = list_files(label_dir, (LABEL_SUFFIX,), "label map")
    for stem, label in labels.items():
        if stem not in images:
            raise DataError(image_dir / f"{stem}{image_suffixes[0]}",
                            f"image not found (its label map {label.name} exists)")
    instance_maps = (list_files(instance_dir, (LABEL_SUFFIX,), "instance map")
                     if instance_dir is not None else {})
    records = []
    for stem, image in images.items():
        label = labels.get(stem)
        if label is None:
            raise DataError(label_dir / f"{stem}{LABEL_SUFFIX}",
                            f"label map of image {image.name} not found")
        instances = None
        if instance_dir is not None:
            instances = instance_maps.get(stem)
            if instances is None:
                raise DataError(instance_dir / f"{stem}{LABEL_SUFFIX}",
                                f"instance map of image {image.name} not found")
        records.append(ImageRecord(stem, image, label, instances))
    return records


def pad_collate(batch: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collate items of different sizes: pad bottom/right to the largest H, W of the batch,
    images with 0 (the mean after normalisation), label maps with 255; then stack."""
    height = max(item["image"].shape[-2] for item in batch)
    width = max(item["image"].shape[-1] for item in batch)
    padded = []
    for item in batch:
        pad_h, pad_w = height - item["image"].shape[-2], width - item["image"].shape[-1]
        out = dict(item)
        for key, value in item.items():
            if key == "image":
                out[key] = F.pad(value, (0, pad_w, 0, pad_h), value=0.0)
            elif key in ("mask", "point_labels"):
                out[key] = F.pad(value, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        padded.append(out)
    return default_collate(padded)
