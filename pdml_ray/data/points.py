"""Point labels: one labelled pixel per instance (the paper's supervision), and their files.

In memory the points of one image are an ``int64 (K, 3)`` array of rows
``(y, x, class_id)`` in pixels of the original image (row, column from the top left) and
dataset class ids (0-based, the ignore value never appears). On disk a whole split is one
Parquet table ``image_id: string, y: int32, x: int32, class_id: int32``, one row per point,
with the dataset, split, class names and generation settings as JSON under the
``pdml_ray`` key of the schema metadata.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import ndimage

from pdml_ray.labels import IGNORE_INDEX

from .errors import DataError
from .io import atomic_file, file_problem

COLUMNS = ("image_id", "y", "x", "class_id")
METADATA_KEY = b"pdml_ray"
STRATEGIES = ("random", "center")
_EMPTY = np.zeros((0, 3), dtype=np.int64)
_INT64 = np.iinfo(np.int64)


# -- generation ----------------------------------------------------------------------
def generate_points(label: np.ndarray, instances: np.ndarray | None = None, *,
                    ignore_index: int = IGNORE_INDEX, seed: int = 0,
                    strategy: str = "random") -> np.ndarray:
    """One point per instance of a dense label map, as the paper's annotators would click.

    Args:
        label: ``(H, W)`` integer class ids; ``ignore_index`` marks unlabelled pixels.
        instances: optional ``(H, W)`` integer instance ids, 0 = no instance. Each nonzero
            id is one instance whose class is the majority non-ignore label inside it;
            its point lies on a pixel carrying that class. Without instance maps every
            8-connected component of one class in ``label`` is an instance.
        ignore_index: label value that is never chosen and never forms an instance.
        seed: seeds ``np.random.default_rng``; the same seed gives the same points.
        strategy: ``"random"``: a uniformly random pixel of the instance; ``"center"``:
            the pixel farthest (Euclidean) from the instance border, where the image edge
            counts as border; ties go to the first such pixel in raster order.

    Returns:
        ``int64 (K, 3)`` rows ``(y, x, class_id)``, one per instance, sorted by
        ``(y, x, class_id)``. Instances made only of ignore pixels get no point.
    """
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype.kind not in "iu":
        raise ValueError(f"label must be a 2-D integer array, got {label.dtype} {label.shape}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    valid = label != ignore_index
    if np.any(label[valid] < 0):
        raise ValueError("label holds negative class ids")
    if instances is None:
        segments, segment_classes = _component_segments(label, valid)
    else:
        instances = np.asarray(instances)
        if instances.shape != label.shape:
            raise ValueError(f"instances {instances.shape} and label {label.shape} differ in shape")
        segments, segment_classes = _instance_segments(label, instances, valid)

    rng = np.random.default_rng(seed)
    rows = []
    for segment, box in enumerate(ndimage.find_objects(segments), start=1):
        if box is None:
            continue
        inside = segments[box] == segment
        if strategy == "center":
            # Pad with background so the image edge counts as the instance's border.
            dist = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
            dy, dx = np.unravel_index(int(np.argmax(dist)), inside.shape)
        else:
            ys, xs = np.nonzero(inside)
            pick = int(rng.integers(len(ys)))
            dy, dx = ys[pick], xs[pick]
        rows.append((box[0].start + dy, box[1].start + dx, segment_classes[segment - 1]))
    if not rows:
        return _EMPTY.copy()
    points = np.asarray(rows, dtype=np.int64)
    return points[np.lexsort((points[:, 2], points[:, 1], points[:, 0]))]


def _component_segments(label: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment map ``(H, W)`` (0 = none, 1..n) of the 8-connected components per class."""
    segments = np.zeros(label.shape, dtype=np.int64)
    classes: list[np.ndarray] = []
    count = 0
    eight_connected = np.ones((3, 3), dtype=bool)
    for cls in np.unique(label[valid]):
        components, n = ndimage.label(label == cls, structure=eight_connected)
        found = components > 0
        segments[found] = components[found] + count
        classes.append(np.full(n, cls, dtype=np.int64))
        count += n
    return segments, np.concatenate(classes) if classes else _EMPTY[:, 0]


def _instance_segments(label: np.ndarray, instances: np.ndarray,
                       valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment map of the instances, each restricted to pixels of its majority class."""
    chosen = (instances > 0) & valid
    ids, which = np.unique(instances[chosen], return_inverse=True)
    labels = label[chosen]
    classes, label_index = np.unique(labels, return_inverse=True)
    votes = np.zeros((len(ids), len(classes)), dtype=np.int64)
    np.add.at(votes, (which, label_index), 1)
    majority = classes[votes.argmax(axis=1)] if len(ids) else _EMPTY[:, 0]
    segments = np.zeros(label.shape, dtype=np.int64)
    segments[chosen] = np.where(labels == majority[which], which + 1, 0)
    return segments, majority.astype(np.int64)


# -- the table -----------------------------------------------------------------------
class PointTable:
    """The points of many images, keyed by image id (the image file's stem).

    Args:
        points: ``{image_id: (K, 3) rows (y, x, class_id)}``; images with no rows are
            dropped (a table cannot tell them apart from images it does not mention).
        metadata: JSON-serialisable settings stored with the file (``dataset``,
            ``split``, ``classes``, ``generation``, ...).
        source: the file it was read from, named in error messages.

    A pixel holds one point: exact repeats of a row are dropped (``duplicates_dropped``
    counts them) and one pixel given two classes is refused with a DataError.
    """

    def __init__(self, points: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None = None,
                 source: str | os.PathLike | None = None) -> None:
        self.source = str(source) if source is not None else "<points>"
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.duplicates_dropped = 0
        self._points: dict[str, np.ndarray] = {}
        for image_id in sorted(points):
            rows = np.asarray(points[image_id], dtype=np.int64).reshape(-1, 3)
            if len(rows):
                rows = rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]
                self._points[str(image_id)] = self._one_point_per_pixel(str(image_id), rows)

    def _one_point_per_pixel(self, image_id: str, rows: np.ndarray) -> np.ndarray:
        """``rows`` sorted by (y, x, class) without exact repeats; DataError if one pixel
        carries two classes."""
        repeated = (rows[1:] == rows[:-1]).all(axis=1)
        if repeated.any():
            self.duplicates_dropped += int(repeated.sum())
            rows = rows[np.concatenate([[True], ~repeated])]
        same_pixel = (rows[1:, :2] == rows[:-1, :2]).all(axis=1)
        if same_pixel.any():
            first = int(np.argmax(same_pixel))
            y, x, cls = (int(v) for v in rows[first])
            raise DataError(self.source, f"image {image_id}: pixel (y={y}, x={x}) is labelled "
                                         f"with two classes, {cls} and {int(rows[first + 1, 2])}")
        return rows

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, int, int, int]],
                  metadata: Mapping[str, Any] | None = None,
                  source: str | os.PathLike | None = None) -> PointTable:
        """From ``(image_id, y, x, class_id)`` tuples."""
        grouped: dict[str, list[tuple[int, int, int]]] = {}
        for image_id, y, x, class_id in rows:
            grouped.setdefault(str(image_id), []).append((y, x, class_id))
        return cls({k: np.asarray(v) for k, v in grouped.items()}, metadata, source)

    # -- views -------------------------------------------------------------------------
    def for_image(self, image_id: str) -> np.ndarray:
        """``int64 (K, 3)`` rows ``(y, x, class_id)``; ``(0, 3)`` for an unknown image."""
        return self._points.get(image_id, _EMPTY)

    @property
    def image_ids(self) -> tuple[str, ...]:
        """Ids of the images with at least one point, sorted."""
        return tuple(self._points)

    @property
    def points_per_image(self) -> dict[str, int]:
        return {image_id: len(rows) for image_id, rows in self._points.items()}

    @property
    def class_counts(self) -> dict[int, int]:
        """``{class_id: number of points}``, sorted by class id."""
        if not self._points:
            return {}
        ids, counts = np.unique(np.concatenate(list(self._points.values()))[:, 2],
                                return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts)}

    @property
    def classes(self) -> tuple[str, ...] | None:
        names = self.metadata.get("classes")
        return tuple(names) if names is not None else None

    @property
    def num_points(self) -> int:
        return sum(len(rows) for rows in self._points.values())

    def __len__(self) -> int:
        return self.num_points

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._points

    def __repr__(self) -> str:
        return (f"PointTable({self.num_points} points in {len(self._points)} images, "
                f"source={self.source!r})")

    def with_metadata(self, metadata: Mapping[str, Any],
                      source: str | os.PathLike | None = None) -> PointTable:
        """The same points with ``metadata`` merged over the current metadata."""
        table = PointTable(self._points, {**self.metadata, **metadata},
                           self.source if source is None else source)
        table.duplicates_dropped = self.duplicates_dropped
        return table

    def to_arrow(self) -> pa.Table:
        """The Parquet form: columns ``image_id, y, x, class_id`` and the JSON metadata."""
        counts = [len(rows) for rows in self._points.values()]
        rows = np.concatenate(list(self._points.values())) if counts else _EMPTY
        schema = pa.schema([("image_id", pa.string()), ("y", pa.int32()), ("x", pa.int32()),
                            ("class_id", pa.int32())],
                           metadata={METADATA_KEY: json.dumps(self.metadata).encode()})
        image_ids = np.repeat(np.asarray(list(self._points), dtype=object), counts)
        return pa.table({"image_id": image_ids, "y": rows[:, 0].astype(np.int32),
                         "x": rows[:, 1].astype(np.int32), "class_id": rows[:, 2].astype(np.int32)},
                        schema=schema)

    def check_classes(self, num_classes: int) -> None:
        """Raise DataError if a class id lies outside ``0..num_classes-1``."""
        for image_id, rows in self._points.items():
            bad = rows[(rows[:, 2] < 0) | (rows[:, 2] >= num_classes)]
            if len(bad):
                raise DataError(self.source, f"image {image_id}: class id {int(bad[0, 2])} "
                                             f"outside 0..{num_classes - 1}")

    def check_bounds(self, image_id: str, size: tuple[int, int]) -> None:
        """Raise DataError if a point of ``image_id`` lies outside an image of ``(H, W)``."""
        rows = self.for_image(image_id)
        outside = ((rows[:, 0] < 0) | (rows[:, 0] >= size[0])
                   | (rows[:, 1] < 0) | (rows[:, 1] >= size[1]))
        if outside.any():
            y, x, _ = (int(v) for v in rows[np.argmax(outside)])
            raise DataError(self.source, f"image {image_id}: point (y={y}, x={x}) lies outside "
                                         f"the image of size {size[0]}x{size[1]} (HxW)")


# -- files ---------------------------------------------------------------------------
def write_points(path: str | os.PathLike,
                 table_or_rows: PointTable | Mapping[str, np.ndarray]
                 | Iterable[tuple[str, int, int, int]],
                 metadata: Mapping[str, Any] | None = None) -> PointTable:
    """Write points as Parquet, atomically (a temp file in the same folder, then ``os.replace``).

    ``table_or_rows`` is a PointTable, ``{image_id: (K, 3) rows}`` or ``(image_id, y, x,
    class_id)`` tuples; ``metadata`` is merged over the table's own. Returns the table as
    written. An empty table is refused: a points file with no points is always a mistake.
    """
    path = Path(path)
    if isinstance(table_or_rows, PointTable):
        table = table_or_rows.with_metadata(metadata or {}, source=path)
    elif isinstance(table_or_rows, Mapping):
        table = PointTable(table_or_rows, metadata, path)
    else:
        table = PointTable.from_rows(table_or_rows, metadata, path)
    if table.num_points == 0:
        raise DataError(path, "no points to write")
    if table.classes is not None:
        table.check_classes(len(table.classes))
    for rows in table._points.values():
        if (rows[:, :2] < 0).any():
            raise DataError(path, "negative point coordinates")
    with atomic_file(path) as tmp:
        pq.write_table(table.to_arrow(), tmp)
    return table


def read_points(path: str | os.PathLike) -> PointTable:
    """Read and validate a points file: Parquet, or an imported ``.csv`` / ``.json``.

    CSV: a header ``image_id,y,x,class_id`` and one row per point (UTF-8, a byte-order
    mark and spaces after the commas allowed). JSON: ``{image_id: [{"y": .., "x": ..,
    "cls": ..}, ...]}``, the shape of Bearman et al.'s released clicks (``class_id`` is
    accepted in place of ``cls``; other keys are ignored). Class ids are taken as they
    are, in the dataset's 0-based class space. Exact repeats of a point are dropped.

    Raises DataError naming the file on: a missing or unreadable file, missing columns,
    CSV rows with more or fewer fields than the header, a JSON image id given twice or a
    point with both ``cls`` and ``class_id``, empty image ids, non-integer coordinates or
    classes, integers beyond 64 bits, nulls, negative coordinates, one pixel with two
    classes, metadata that is not a JSON object (with a list of class names), class ids
    outside those class names, or no points at all.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise DataError(path, f"points file {problem}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = _read_csv(path)
    elif suffix == ".json":
        table = _read_json(path)
    else:
        table = _read_parquet(path)
    if table.num_points == 0:
        raise DataError(path, "points file holds no points")
    if table.classes is not None:
        table.check_classes(len(table.classes))
    return table


def _read_parquet(path: Path) -> PointTable:
    try:
        arrow = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(path, f"cannot read Parquet: {exc}") from None
    missing = [c for c in COLUMNS if c not in arrow.column_names]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; a points file needs "
                              f"{', '.join(COLUMNS)}")
    if not (pa.types.is_string(arrow.schema.field("image_id").type)
            or pa.types.is_large_string(arrow.schema.field("image_id").type)):
        raise DataError(path, f"column image_id has type {arrow.schema.field('image_id').type}; "
                              f"expected string")
    for name in COLUMNS:
        if name != "image_id" and not pa.types.is_integer(arrow.schema.field(name).type):
            raise DataError(path, f"column {name} has type {arrow.schema.field(name).type}; "
                                  f"expected an integer type")
        if arrow.column(name).null_count:
            raise DataError(path, f"column {name} holds {arrow.column(name).null_count} null(s)")
        if pa.types.is_uint64(arrow.schema.field(name).type) and len(arrow):
            largest = pc.max(arrow.column(name)).as_py()
            if largest > _INT64.max:  # would wrap to a negative int64
                raise DataError(path, f"column {name} holds {largest}, which does not fit in "
                                      f"a 64-bit signed integer")
    metadata = _parquet_metadata(path, (arrow.schema.metadata or {}).get(METADATA_KEY))
    image_ids = arrow.column("image_id").to_numpy(zero_copy_only=False)
    empty = int((image_ids == "").sum())
    if empty:
        raise DataError(path, f"column image_id holds {empty} empty id(s)")
    rows = np.stack([arrow.column(c).to_numpy().astype(np.int64) for c in COLUMNS[1:]], axis=1)
    return _group(path, image_ids, rows, metadata)


def _parquet_metadata(path: Path, raw: bytes | None) -> dict[str, Any]:
    """The JSON under the ``pdml_ray`` key: an object whose ``classes``, if present, is a
    list of class names."""
    if raw is None:
        return {}
    key = METADATA_KEY.decode()
    try:
        metadata = json.loads(raw)
    except ValueError as exc:
        raise DataError(path, f"metadata under '{key}' is not JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise DataError(path, f"metadata under '{key}' is a JSON {type(metadata).__name__}; "
                              f"expected an object")
    classes = metadata.get("classes")
    if classes is not None and not (isinstance(classes, list)
                                    and all(isinstance(name, str) for name in classes)):
        raise DataError(path, f"metadata under '{key}': 'classes' must be a list of class "
                              f"names, got {json.dumps(classes)[:80]}")
    return metadata


def _group(path: Path, image_ids: np.ndarray, rows: np.ndarray,
           metadata: Mapping[str, Any]) -> PointTable:
    if len(rows) and (rows[:, :2] < 0).any():
        y, x, _ = rows[np.argmax((rows[:, :2] < 0).any(axis=1))]
        raise DataError(path, f"negative point coordinates (y={y}, x={x})")
    if len(rows) and (rows[:, 2] < 0).any():
        raise DataError(path, f"negative class id {int(rows[:, 2].min())}")
    if not len(rows):
        return PointTable({}, metadata, path)
    ids, which = np.unique(image_ids.astype(str), return_inverse=True)
    order = np.argsort(which, kind="stable")
    bounds = np.cumsum(np.bincount(which, minlength=len(ids)))[:-1]
    return PointTable(dict(zip(ids.tolist(), np.split(rows[order], bounds))), metadata, path)


def shown_id(image_id: str) -> str:
    """An image id as a message shows it: quoted when it is empty or has outer spaces."""
    return image_id if image_id and image_id.strip() == image_id else repr(image_id)


def _int64(path: Path, where: str, name: str, value: int) -> int:
    if not _INT64.min <= value <= _INT64.max:
        raise DataError(path, f"{where}: {name} = {value} does not fit in a 64-bit integer")
    return value


def _read_csv(path: Path) -> PointTable:
    image_ids, rows = [], []
    try:
        # utf-8-sig: spreadsheet programs start CSV files with a byte-order mark.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            header = [name.strip() for name in reader.fieldnames or ()]
            reader.fieldnames = header
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise DataError(path, f"missing column(s) {', '.join(missing)} in the CSV header; "
                                      f"expected {','.join(COLUMNS)}")
            for record in reader:
                line = reader.line_num
                fields = (sum(value is not None for key, value in record.items() if key is not None)
                          + len(record.get(None, ())))
                if fields != len(header):
                    raise DataError(path, f"line {line}: {fields} fields, but the header has "
                                          f"{len(header)} ({','.join(header)})")
                try:
                    values = [int(record[c]) for c in COLUMNS[1:]]
                except ValueError:
                    raise DataError(path, f"line {line}: y, x and class_id must be integers, got "
                                          f"{[record[c] for c in COLUMNS[1:]]}") from None
                rows.append([_int64(path, f"line {line}", name, value)
                             for name, value in zip(COLUMNS[1:], values)])
                image_id = record["image_id"].strip()
                if not image_id:
                    raise DataError(path, f"line {line}: empty image_id")
                image_ids.append(image_id)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read CSV: {exc}") from None
    return _group(path, np.asarray(image_ids, dtype=object),
                  np.asarray(rows, dtype=np.int64).reshape(-1, 3), {"imported_from": path.name})


class _JSONObject(dict):
    """A JSON object that remembers the keys it was given more than once (``json``
    itself keeps the last value of a repeated key, silently)."""

    repeated: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, Any]]) -> _JSONObject:
    obj = _JSONObject(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        obj.repeated = tuple(dict.fromkeys(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _read_json(path: Path) -> PointTable:
    try:
        raw = json.loads(path.read_bytes().decode("utf-8-sig"), object_pairs_hook=_json_object)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(path, f"cannot read JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise DataError(path, 'expected an object {image_id: [{"y": .., "x": .., "cls": ..}, ...]}')
    if raw.repeated:
        raise DataError(path, f"image {shown_id(raw.repeated[0])} is a key more than once; JSON "
                              f"would keep only its last list of points: merge them into one")
    image_ids, rows = [], []
    for image_id, clicks in raw.items():
        if not image_id.strip():
            raise DataError(path, f"empty image id {image_id!r}")
        if not isinstance(clicks, list):
            raise DataError(path, f"image {image_id}: expected a list of points, got "
                                  f"{type(clicks).__name__}")
        for i, click in enumerate(clicks):
            where = f"image {image_id}, point {i}"
            if isinstance(click, _JSONObject) and click.repeated:
                raise DataError(path, f"{where}: key {click.repeated[0]!r} is given more than "
                                      f"once in {dict(click)!r}")
            if isinstance(click, dict) and "cls" in click and "class_id" in click:
                raise DataError(path, f"{where}: has both cls ({click['cls']!r}) and class_id "
                                      f"({click['class_id']!r}); give one")
            cls = click.get("cls", click.get("class_id")) if isinstance(click, dict) else None
            values = (click.get("y"), click.get("x"), cls) if isinstance(click, dict) else (None,)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise DataError(path, f"{where}: expected integer y, x and cls, got "
                                      f"{click!r}")
            image_ids.append(image_id)
            rows.append([_int64(path, where, name, value)
                         for name, value in zip(("y", "x", "cls"), values)])
    return _group(path, np.asarray(image_ids, dtype=object),
                  np.asarray(rows, dtype=np.int64).reshape(-1, 3), {"imported_from": path.name})
