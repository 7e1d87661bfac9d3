from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pdml_ray.data import DataError, PointTable, generate_points, read_points, write_points
from pdml_ray.data import points as points_module

IGNORE = 255


def flood_components(label: np.ndarray, ignore: int = IGNORE) -> np.ndarray:
    """Reference 8-connected components by breadth-first flood fill (0 = none)."""
    height, width = label.shape
    comp = np.zeros(label.shape, dtype=np.int64)
    count = 0
    for y0 in range(height):
        for x0 in range(width):
            if label[y0, x0] == ignore or comp[y0, x0]:
                continue
            count += 1
            comp[y0, x0] = count
            queue = [(y0, x0)]
            while queue:
                y, x = queue.pop()
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if (0 <= ny < height and 0 <= nx < width and not comp[ny, nx]
                                and label[ny, nx] == label[y0, x0]):
                            comp[ny, nx] = count
                            queue.append((ny, nx))
    return comp


def random_label(seed: int, size: int = 14, classes: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, (size, size))
    label[rng.random((size, size)) < 0.15] = IGNORE
    return label


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("strategy", ["random", "center"])
def test_one_point_per_component_with_its_class(seed, strategy):
    label = random_label(seed)
    comp = flood_components(label)
    points = generate_points(label, seed=seed, strategy=strategy)
    assert points.dtype == np.int64 and points.shape == (comp.max(), 3)
    ys, xs, classes = points.T
    assert (label[ys, xs] != IGNORE).all()
    np.testing.assert_array_equal(label[ys, xs], classes)
    assert sorted(comp[ys, xs].tolist()) == list(range(1, comp.max() + 1))
    assert np.array_equal(points, points[np.lexsort((classes, xs, ys))])


def test_diagonal_pixels_are_one_component():
    label = np.full((4, 4), IGNORE)
    label[0, 0] = label[1, 1] = label[2, 2] = 1
    label[3, 0] = 1
    assert len(generate_points(label)) == 2


def test_instances_give_one_point_each_with_majority_class():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (20, 20))
    label[:3] = IGNORE
    instances = np.kron(np.arange(1, 17).reshape(4, 4), np.ones((5, 5), dtype=np.int64))
    instances[15:, 15:] = 0  # no instance
    instances[:3, :] = 99  # an instance of ignore pixels only: no point
    points = generate_points(label, instances, seed=3)
    ys, xs, classes = points.T
    expected = [i for i in np.unique(instances) if i not in (0, 99)]
    assert sorted(instances[ys, xs].tolist()) == expected
    for y, x, cls in points:
        inside = label[(instances == instances[y, x]) & (label != IGNORE)]
        counts = np.bincount(inside)
        assert cls == np.argmax(counts) and label[y, x] == cls


def test_same_seed_same_points_other_seed_other_points():
    label = np.zeros((40, 40), dtype=np.int64)
    label[20:] = 1
    a, b = generate_points(label, seed=7), generate_points(label, seed=7)
    np.testing.assert_array_equal(a, b)
    others = [generate_points(label, seed=s) for s in range(8, 12)]
    assert any(not np.array_equal(a, o) for o in others)


def test_random_points_cover_the_instance_uniformly():
    label = np.full((3, 3), IGNORE)
    label[1, :2] = 2
    label[2, 1:] = 2  # four pixels, one component
    counts = {}
    for seed in range(400):
        (y, x, _), = generate_points(label, seed=seed)
        counts[(y, x)] = counts.get((y, x), 0) + 1
    assert len(counts) == 4 and min(counts.values()) > 60


@pytest.mark.parametrize("seed", range(3))
def test_center_is_a_pixel_of_maximal_distance_to_the_border(seed):
    label = random_label(seed, size=12, classes=2)
    comp = flood_components(label)
    height, width = label.shape
    for y, x, _ in generate_points(label, strategy="center"):
        members = np.argwhere(comp == comp[y, x])
        outside = [(yy, xx) for yy in range(-1, height + 1) for xx in range(-1, width + 1)
                   if not (0 <= yy < height and 0 <= xx < width) or comp[yy, xx] != comp[y, x]]
        outside = np.asarray(outside, dtype=np.float64)

        def border_distance(p):
            return np.sqrt(((outside - p) ** 2).sum(axis=1)).min()

        best = max(border_distance(p) for p in members)
        assert border_distance(np.array([y, x])) == pytest.approx(best)


def test_all_ignore_gives_no_points_and_bad_strategy_is_refused():
    assert generate_points(np.full((5, 5), IGNORE)).shape == (0, 3)
    with pytest.raises(ValueError, match="strategy"):
        generate_points(np.zeros((5, 5), dtype=np.int64), strategy="corner")


# -- the table and its files -------------------------------------------------------------
def sample_table() -> PointTable:
    return PointTable({"b": np.array([[3, 4, 1], [0, 0, 2]]), "a": np.array([[5, 1, 0]]),
                       "empty": np.zeros((0, 3))},
                      {"dataset": "synthetic", "split": "train", "classes": ["x", "y", "z"],
                       "generation": {"seed": 1, "strategy": "random"}})


def test_table_views():
    table = sample_table()
    assert table.image_ids == ("a", "b")
    assert table.points_per_image == {"a": 1, "b": 2}
    assert table.class_counts == {0: 1, 1: 1, 2: 1}
    np.testing.assert_array_equal(table.for_image("b"), [[0, 0, 2], [3, 4, 1]])
    assert table.for_image("unknown").shape == (0, 3)
    assert len(table) == 3 and "a" in table and "empty" not in table


def test_parquet_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    path = tmp_path / "points.parquet"
    table = sample_table()
    write_points(path, table)
    arrow = pq.read_table(path)
    assert arrow.schema.field("image_id").type == pa.string()
    for name in ("y", "x", "class_id"):
        assert arrow.schema.field(name).type == pa.int32()
    assert json.loads(arrow.schema.metadata[b"pdml_ray"]) == table.metadata
    back = read_points(path)
    assert back.metadata == table.metadata and back.image_ids == table.image_ids
    for image_id in table.image_ids:
        np.testing.assert_array_equal(back.for_image(image_id), table.for_image(image_id))
        assert back.for_image(image_id).dtype == np.int64
    assert back.source == str(path)


def test_write_accepts_rows_and_merges_metadata(tmp_path):
    path = tmp_path / "p.parquet"
    written = write_points(path, [("a", 1, 2, 0), ("a", 0, 0, 1)], {"split": "train"})
    assert read_points(path).points_per_image == {"a": 2} and written.metadata == {"split": "train"}
    with pytest.raises(DataError, match="no points"):
        write_points(tmp_path / "none.parquet", {})
    assert not (tmp_path / "none.parquet").exists()


def test_failed_write_leaves_no_temp_file_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "points.parquet"
    write_points(path, sample_table())
    before = path.read_bytes()

    def broken_write(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(points_module.pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_points(path, sample_table())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["points.parquet"]


def write_arrow(path, columns, metadata=None):
    schema_meta = {b"pdml_ray": json.dumps(metadata).encode()} if metadata else None
    pq.write_table(pa.table(columns).replace_schema_metadata(schema_meta), path)
    return path


GOOD = {"image_id": pa.array(["a", "a"], pa.string()), "y": pa.array([1, 2], pa.int32()),
        "x": pa.array([3, 4], pa.int32()), "class_id": pa.array([0, 1], pa.int32())}


@pytest.mark.parametrize("change, message", [
    ({"class_id": None}, "missing column"),
    ({"y": pa.array([1.0, 2.0])}, "column y has type double"),
    ({"x": pa.array([3, -1], pa.int32())}, "negative point coordinates"),
    ({"x": pa.array([3, None], pa.int32())}, "null"),
    ({"image_id": pa.array([1, 2])}, "column image_id has type"),
])
def test_read_rejects_bad_columns(tmp_path, change, message):
    columns = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path = write_arrow(tmp_path / "bad.parquet", columns)
    with pytest.raises(DataError, match=message) as info:
        read_points(path)
    assert str(path) in str(info.value)


def test_read_rejects_class_outside_metadata_classes_empty_and_broken_files(tmp_path):
    path = write_arrow(tmp_path / "c.parquet", GOOD, {"classes": ["only"]})
    with pytest.raises(DataError, match="class id 1 outside 0..0"):
        read_points(path)
    empty = write_arrow(tmp_path / "e.parquet", {k: v[:0] for k, v in GOOD.items()})
    with pytest.raises(DataError, match="no points"):
        read_points(empty)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read Parquet"):
        read_points(tmp_path / "junk.parquet")
    with pytest.raises(DataError, match="not found"):
        read_points(tmp_path / "missing.parquet")


def test_csv_and_json_imports_equal_the_parquet_table(tmp_path):
    table = sample_table()
    parquet = write_points(tmp_path / "p.parquet", table)
    rows = [(image_id, *map(int, row))
            for image_id in table.image_ids for row in table.for_image(image_id)]
    csv_path = tmp_path / "p.csv"
    lines = "".join(f"{i},{y},{x},{c}\n" for i, y, x, c in rows[::-1])  # order must not matter
    csv_path.write_text("image_id,y,x,class_id\n" + lines)
    json_path = tmp_path / "p.json"
    clicks: dict[str, list] = {}
    for i, y, x, c in rows:
        clicks.setdefault(i, []).append({"cls": c, "x": x, "y": y, "rank": 1})
    json_path.write_text(json.dumps(clicks))
    expected = read_points(parquet.source).to_arrow().replace_schema_metadata(None)
    for path in (csv_path, json_path):
        assert read_points(path).to_arrow().replace_schema_metadata(None).equals(expected)


def test_bad_csv_and_json_name_the_problem(tmp_path):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("image_id,y,x,class_id\na,1,2,0\na,1.5,2,0\n")
    with pytest.raises(DataError, match="line 3"):
        read_points(bad_csv)
    no_header = tmp_path / "nohead.csv"
    no_header.write_text("a,1,2,0\n")
    with pytest.raises(DataError, match="missing column"):
        read_points(no_header)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"a": [{"y": 1, "x": "2", "cls": 0}]}))
    with pytest.raises(DataError, match="image a, point 0"):
        read_points(bad_json)


def test_bounds_check_names_file_image_and_coordinates():
    table = PointTable({"img": np.array([[2, 40, 1]])}, source="clicks.json")
    table.check_bounds("img", (32, 41))
    with pytest.raises(DataError, match=r"clicks.json: image img: point \(y=2, x=40\)"):
        table.check_bounds("img", (32, 40))


# -- what users send: repeats, conflicts, odd CSV/JSON/Parquet ------------------------------
def test_one_pixel_with_two_classes_is_refused_naming_image_and_pixel(tmp_path):
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("image_id,y,x,class_id\na,1,1,0\nb,3,4,2\nb,3,4,1\n")
    with pytest.raises(DataError) as info:
        read_points(clicks)
    assert str(info.value) == (f"{clicks}: image b: pixel (y=3, x=4) is labelled with two "
                               "classes, 1 and 2")
    as_json = tmp_path / "clicks.json"
    as_json.write_text(json.dumps({"b": [{"y": 3, "x": 4, "cls": 2}, {"y": 3, "x": 4, "cls": 1}]}))
    with pytest.raises(DataError, match=r"image b: pixel \(y=3, x=4\) is labelled with two"):
        read_points(as_json)


def test_exact_duplicates_are_dropped_and_counted(tmp_path):
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("image_id,y,x,class_id\n" + "a,1,1,0\n" * 3 + "b,2,2,1\nb,2,2,1\nc,0,0,3\n")
    table = read_points(clicks)
    assert table.points_per_image == {"a": 1, "b": 1, "c": 1} and table.num_points == 3
    assert table.duplicates_dropped == 3
    write_points(tmp_path / "p.parquet", table)
    assert read_points(tmp_path / "p.parquet").num_points == 3
    assert table.with_metadata({"split": "train"}).duplicates_dropped == 3
    assert PointTable({"a": np.array([[1, 1, 0]])}).duplicates_dropped == 0


def test_json_image_key_given_twice_is_refused(tmp_path):
    clicks = tmp_path / "clicks.json"
    clicks.write_text('{"a": [{"y": 1, "x": 1, "cls": 0}], "b": [], '
                      '"a": [{"y": 2, "x": 2, "cls": 1}]}')
    with pytest.raises(DataError) as info:
        read_points(clicks)
    assert str(info.value) == (f"{clicks}: image a is a key more than once; JSON would keep only "
                               "its last list of points: merge them into one")
    clicks.write_text('{"a": [{"y": 1, "x": 1, "y": 5, "cls": 0}]}')
    with pytest.raises(DataError, match="image a, point 0: key 'y' is given more than once"):
        read_points(clicks)


def test_json_point_with_both_cls_and_class_id_is_refused(tmp_path):
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"a": [{"y": 1, "x": 1, "cls": 3, "class_id": 4}]}))
    with pytest.raises(DataError) as info:
        read_points(clicks)
    assert str(info.value) == (f"{clicks}: image a, point 0: has both cls (3) and class_id (4); "
                               "give one")
    clicks.write_text(json.dumps({"a": [{"y": 1, "x": 1, "class_id": 4}]}))
    assert read_points(clicks).for_image("a").tolist() == [[1, 1, 4]]


@pytest.mark.parametrize("row, fields", [("a,1,2,0,7", 5), ("a,1,2", 3)])
def test_csv_rows_with_more_or_fewer_fields_than_the_header_are_refused(tmp_path, row, fields):
    clicks = tmp_path / "clicks.csv"
    clicks.write_text(f"image_id,y,x,class_id\na,0,0,1\n{row}\n")
    with pytest.raises(DataError) as info:
        read_points(clicks)
    assert str(info.value) == (f"{clicks}: line 3: {fields} fields, but the header has 4 "
                               "(image_id,y,x,class_id)")


def test_integers_beyond_64_bits_are_one_clear_error(tmp_path):
    huge = 2 ** 64 + 5
    clicks = tmp_path / "clicks.csv"
    clicks.write_text(f"image_id,y,x,class_id\na,1,{huge},0\n")
    with pytest.raises(DataError) as info:
        read_points(clicks)
    assert str(info.value) == f"{clicks}: line 2: x = {huge} does not fit in a 64-bit integer"
    as_json = tmp_path / "clicks.json"
    as_json.write_text(f'{{"a": [{{"y": 1, "x": 1, "cls": {huge}}}]}}')
    with pytest.raises(DataError) as info:
        read_points(as_json)
    assert str(info.value) == (f"{as_json}: image a, point 0: cls = {huge} does not fit in a "
                               "64-bit integer")


def test_uint64_coordinate_is_not_reported_as_negative(tmp_path):
    big = 2 ** 64 - 1
    columns = {**GOOD, "y": pa.array([1, big], pa.uint64())}
    path = write_arrow(tmp_path / "u.parquet", columns)
    with pytest.raises(DataError) as info:
        read_points(path)
    assert str(info.value) == (f"{path}: column y holds {big}, which does not fit in a 64-bit "
                               "signed integer")
    fine = write_arrow(tmp_path / "ok.parquet", {**GOOD, "y": pa.array([1, 2], pa.uint64())})
    assert read_points(fine).for_image("a")[:, 0].tolist() == [1, 2]


def test_csv_with_a_byte_order_mark_and_spaces_after_commas_is_read(tmp_path):
    clicks = tmp_path / "clicks.csv"
    clicks.write_bytes("\ufeffimage_id, y, x, class_id\r\na, 1, 2, 0\r\nb , 3 ,4,1\r\n"
                       .encode("utf-8"))
    table = read_points(clicks)
    assert table.points_per_image == {"a": 1, "b": 1}
    assert table.for_image("a").tolist() == [[1, 2, 0]]
    assert table.for_image("b").tolist() == [[3, 4, 1]]


@pytest.mark.parametrize("metadata, problem", [
    (["a", "b"], "metadata under 'pdml_ray' is a JSON list; expected an object"),
    ({"classes": 5}, "metadata under 'pdml_ray': 'classes' must be a list of class names, got 5"),
    ({"classes": [1, 2]},
     "metadata under 'pdml_ray': 'classes' must be a list of class names, got [1, 2]"),
])
def test_parquet_metadata_of_the_wrong_shape_is_one_clear_error(tmp_path, metadata, problem):
    path = write_arrow(tmp_path / "m.parquet", GOOD, metadata)
    with pytest.raises(DataError) as info:
        read_points(path)
    assert str(info.value) == f"{path}: {problem}"


def test_empty_image_ids_are_refused_where_they_are_written(tmp_path):
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("image_id,y,x,class_id\na,1,1,0\n ,2,2,1\n")
    with pytest.raises(DataError) as info:
        read_points(clicks)
    assert str(info.value) == f"{clicks}: line 3: empty image_id"
    as_json = tmp_path / "clicks.json"
    as_json.write_text(json.dumps({"": [{"y": 1, "x": 1, "cls": 0}]}))
    with pytest.raises(DataError) as info:
        read_points(as_json)
    assert str(info.value) == f"{as_json}: empty image id ''"
    path = write_arrow(tmp_path / "e.parquet", {**GOOD, "image_id": pa.array(["a", ""])})
    with pytest.raises(DataError) as info:
        read_points(path)
    assert str(info.value) == f"{path}: column image_id holds 1 empty id(s)"
