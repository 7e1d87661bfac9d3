"""Checking a dataset split before training: what is wrong with each file, all at once.

:func:`check_item` decodes one image with its label (and instance) map through the
dataset's own readers and returns every problem found, instead of raising at the first;
:func:`check_item_header` reads only the file headers (existence, format, mode, size),
cheap enough to run over a whole split before workers start; a size mismatch that an
EXIF orientation explains says so there too. :func:`missing_partners` lists every image
without a label map (and the reverse) when the split cannot even be listed. No Ray
here: ``pdml_ray.service.train.data_check`` spreads the items over tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

from .base import IMAGE_SUFFIXES, LABEL_SUFFIX, SPLIT_FOLDERS, SegmentationDataset
from .errors import DataError
from .io import LABEL_MODES, exif_turn_note, image_size, opened_image
from .pascal_context import LABEL_FOLDER, SPLIT_FILES, PascalContextDataset, read_split_list


class FileProblem(NamedTuple):
    """One thing wrong with one file: ``"<path>: <problem>"``."""

    path: str
    problem: str

    @classmethod
    def of(cls, error: DataError) -> FileProblem:
        return cls(error.source, error.problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def check_item(dataset: SegmentationDataset, index: int) -> list[FileProblem]:
    """Decode item ``index`` fully: the image, the label map (mode, format, values within
    the dataset's classes), the instance map if any, and that their sizes agree."""
    problems, shapes = [], {}
    loaders = (("image", dataset.load_image), ("label", dataset.load_mask),
               ("instances", dataset.load_instances))
    for name, load in loaders:
        try:
            array = load(index)
        except DataError as error:
            problems.append(FileProblem.of(error))
            continue
        if array is not None:
            shapes[name] = array.shape[:2]
    if "image" in shapes and "label" in shapes and shapes["image"] != shapes["label"]:
        try:
            dataset.load_pair(index)  # its message explains EXIF-rotated photos too
        except DataError as error:
            problems.append(FileProblem.of(error))
    record = dataset.records[index]
    if "label" in shapes and "instances" in shapes and shapes["label"] != shapes["instances"]:
        (height, width), (inst_h, inst_w) = shapes["label"], shapes["instances"]
        problems.append(FileProblem(str(record.instance_path),
                                    f"instance map is {inst_h}x{inst_w} but label map "
                                    f"{record.label_path.name} is {height}x{width} (HxW)"))
    return problems


def _label_header(path: Path, what: str, max_pixels: int) -> tuple[int, int]:
    """``(H, W)`` of a label PNG from its header; raises DataError on a missing file, an
    unreadable header, non-PNG data or a mode that holds no class ids."""
    with opened_image(path, what, f"cannot read {what} header", max_pixels) as img:
        size, mode, image_format = img.size, img.mode, img.format
    if image_format != "PNG":
        raise DataError(path, f"{what} is {image_format} data, not PNG; save label maps as PNG")
    if mode not in LABEL_MODES:
        raise DataError(path, f"{what} PNG has mode {mode}; expected a single-channel PNG of "
                              f"class ids (mode {', '.join(LABEL_MODES)})")
    width, height = size
    return height, width


def check_item_header(dataset: SegmentationDataset, index: int) -> list[FileProblem]:
    """Read only the headers of item ``index``: files exist and open, label maps are
    single-channel PNGs, and image, label and instance maps have one size. Truncated
    bodies and label values out of range need :func:`check_item`."""
    record = dataset.records[index]
    problems, sizes = [], {}
    readers = (("image", lambda: image_size(record.image_path, dataset.max_image_pixels)),
               ("label", lambda: _label_header(record.label_path, "label map",
                                               dataset.max_image_pixels)),
               ("instances", lambda: (_label_header(record.instance_path, "instance map",
                                                    dataset.max_image_pixels)
                                      if record.instance_path is not None else None)))
    for name, read in readers:
        try:
            size = read()
        except DataError as error:
            problems.append(FileProblem.of(error))
            continue
        if size is not None:
            sizes[name] = size
    for name, path in (("label", record.label_path), ("instances", record.instance_path)):
        if "image" in sizes and name in sizes and sizes[name] != sizes["image"]:
            what = "label map" if name == "label" else "instance map"
            (height, width), (image_h, image_w) = sizes[name], sizes["image"]
            problems.append(FileProblem(str(path), f"{what} is {height}x{width} but image "
                                                   f"{record.image_path.name} is {image_h}x"
                                                   f"{image_w} (HxW)" + exif_turn_note(
                                                       record.image_path, sizes["image"],
                                                       sizes[name])))
    return problems


def _stems(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.iterdir())
            if path.suffix.lower() in suffixes and not path.name.startswith("._")}


def missing_partners(dataset_cls: type[SegmentationDataset], root: str | Path,
                     split: str) -> list[FileProblem]:
    """Every image of a split without its label (or instance) map, and every label map
    without its image, named by the file that is missing. For a split the dataset cannot
    list (its listing stops at the first missing file); [] when the layout itself is not
    found (the dataset's own error says why)."""
    try:
        base = dataset_cls.find_root(Path(root))
    except DataError:
        return []
    if issubclass(dataset_cls, PascalContextDataset):
        split_file = base / "ImageSets" / "SegmentationContext" / SPLIT_FILES[split]
        try:
            wanted = read_split_list(split_file)
        except DataError:
            return []
        images = _stems(base / "JPEGImages", IMAGE_SUFFIXES)
        labels = _stems(base / LABEL_FOLDER, (LABEL_SUFFIX,))
        problems = []
        for stem in wanted:
            if stem not in images:
                problems.append(FileProblem(str(base / "JPEGImages" / f"{stem}{IMAGE_SUFFIXES[0]}"),
                                            f"image not found (listed in {split_file.name})"))
            if stem not in labels:
                problems.append(FileProblem(str(base / LABEL_FOLDER / f"{stem}{LABEL_SUFFIX}"),
                                            f"label map not found (listed in {split_file.name})"))
        return problems
    folder = SPLIT_FOLDERS[split]
    image_dir, label_dir = base / "images" / folder, base / "annotations" / folder
    instance_dir = base / "instances" / folder if (base / "instances").is_dir() else None
    images, labels = _stems(image_dir, IMAGE_SUFFIXES), _stems(label_dir, (LABEL_SUFFIX,))
    instances = _stems(instance_dir, (LABEL_SUFFIX,)) if instance_dir is not None else {}
    problems = []
    for stem in sorted(set(images) | set(labels)):
        if stem not in images:
            problems.append(FileProblem(str(image_dir / f"{stem}{IMAGE_SUFFIXES[0]}"),
                                        f"image not found (its label map {labels[stem].name} "
                                        f"exists)"))
            continue
        if stem not in labels:
            problems.append(FileProblem(str(label_dir / f"{stem}{LABEL_SUFFIX}"),
                                        f"label map of image {images[stem].name} not found"))
        if instance_dir is not None and stem not in instances:
            problems.append(FileProblem(str(instance_dir / f"{stem}{LABEL_SUFFIX}"),
                                        f"instance map of image {images[stem].name} not found"))
    return problems


def by_file(problems: Sequence[FileProblem]) -> list[str]:
    """One line per file, ``"<path>: <problem>; <problem>"``, sorted by path."""
    grouped: dict[str, list[str]] = {}
    for problem in problems:
        grouped.setdefault(problem.path, []).append(problem.problem)
    return [f"{path}: {'; '.join(found)}" for path, found in sorted(grouped.items())]
