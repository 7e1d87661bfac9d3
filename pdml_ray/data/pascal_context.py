"""PASCAL-Context, 59 classes, in mmsegmentation's converter layout.

::

    VOC2010/
        JPEGImages/2008_000002.jpg
        SegmentationClassContext/2008_000002.png     (0 = background, k = class k-1)
        ImageSets/SegmentationContext/{train,val}.txt  (one image id per line)

Class names are those of mmsegmentation's PascalContextDataset59.
"""

from __future__ import annotations

from pathlib import Path

from .base import IMAGE_SUFFIXES, LABEL_SUFFIX, ImageRecord, SegmentationDataset, list_files
from .errors import DataError
from .io import file_problem

PASCAL_CONTEXT_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood",
)

PASCAL_CONTEXT_PALETTE = (
    (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255),
    (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82),
    (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224),
    (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255), (8, 255, 214),
    (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8),
    (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255),
    (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15), (20, 255, 0),
    (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
)

SPLIT_FILES = {"train": "train.txt", "val": "val.txt"}
LABEL_FOLDER = "SegmentationClassContext"


class PascalContextDataset(SegmentationDataset):
    """PASCAL-Context 59. ``root`` is ``VOC2010/``, or a folder holding ``VOC2010/`` or
    ``VOCdevkit/VOC2010/``."""

    name = "pascal_context"
    classes = PASCAL_CONTEXT_CLASSES
    palette = PASCAL_CONTEXT_PALETTE

    @classmethod
    def find_root(cls, root: Path) -> Path:
        for candidate in (root, root / "VOC2010", root / "VOCdevkit" / "VOC2010"):
            if (candidate / "JPEGImages").is_dir() and (candidate / LABEL_FOLDER).is_dir():
                return candidate
        raise DataError(root, "not a PASCAL-Context folder: expected JPEGImages/ and "
                              "SegmentationClassContext/ in it, or in VOC2010/ inside it")

    def list_records(self) -> list[ImageRecord]:
        split_file = self.root / "ImageSets" / "SegmentationContext" / SPLIT_FILES[self.split]
        image_ids = read_split_list(split_file)
        images = list_files(self.root / "JPEGImages", IMAGE_SUFFIXES, "image")
        records = []
        for image_id in image_ids:
            image = images.get(image_id)
            if image is None:
                raise DataError(self.root / "JPEGImages" / f"{image_id}{IMAGE_SUFFIXES[0]}",
                                f"image not found (listed in {split_file.name})")
            label = self.root / LABEL_FOLDER / f"{image_id}{LABEL_SUFFIX}"
            problem = file_problem(label)
            if problem is not None:
                raise DataError(label, f"label map {problem} (listed in {split_file.name})")
            records.append(ImageRecord(image_id, image, label))
        return records


def read_split_list(path: Path) -> list[str]:
    """The image ids of a split list (one per line, UTF-8, a byte-order mark allowed),
    sorted and without repeats. An id is a file stem: one with a folder in it (which
    could reach outside the dataset, ``../../x``) is refused, naming its line."""
    problem = file_problem(path)
    if problem is not None:
        raise DataError(path, f"split file {problem}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"split file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                              f"at offset {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DataError(path, f"cannot read split file: {exc.strerror or exc}") from None
    image_ids = set()
    for line_number, line in enumerate(text.splitlines(), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if "/" in image_id or "\\" in image_id or image_id in (".", ".."):
            raise DataError(path, f"line {line_number}: {image_id!r} is a path, not an image id; "
                                  f"ids are file names without folder or extension "
                                  f"(e.g. 2008_000002), inside JPEGImages/")
        image_ids.add(image_id)
    if not image_ids:
        raise DataError(path, "split file lists no images: the split is empty")
    return sorted(image_ids)
