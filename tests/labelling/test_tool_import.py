"""Clicks from the labelling tools through ``prepare_points --import``: told apart by
content, checked against the dataset, and the round trip suggestions -> Label Studio
tasks -> completed -> imported back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pdml_ray.data import DataError, SyntheticDataset, read_points, write_points
from pdml_ray.labelling.label_studio import local_files_url, suggestion_tasks
from pdml_ray.labelling.suggestions import (Suggestion, read_suggestions_csv,
                                            write_suggestions_csv)
from pdml_ray.labelling.tool_import import detect_format, import_points

from .conftest import SCENE_SIZE

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("content, kind", [
    (b'<?xml version="1.0"?><annotations/>', "cvat"), (b"\xef\xbb\xbf  \n<annotations/>", "cvat"),
    (b'[{"data": {}}]', "label-studio"), (b"\n [", "label-studio"),
    (b'{"img": []}', "points"), (b"image_id,y,x,class_id\n", "points"), (b"PAR1\x15", "points"),
])
def test_formats_are_told_apart_by_content(content, kind):
    assert detect_format(content) == kind


def completed_by_annotator(tasks: list[dict], masks: dict[str, np.ndarray],
                           classes: tuple[str, ...]) -> list[dict]:
    """What Label Studio exports after a person has answered every pre-annotated point:
    the point kept where it was, its label set to the class the dense mask holds there
    (the suggested class was a guess), submitted as an annotation."""
    exported = []
    for number, task in enumerate(tasks, start=1):
        results = []
        for prediction in task["predictions"][0]["result"]:
            value = prediction["value"]
            image_id = task["data"]["image_id"]
            height, width = masks[image_id].shape
            y = int(value["y"] / 100 * height)
            x = int(value["x"] / 100 * width)
            answer = classes[masks[image_id][y, x]]
            results.append({**prediction, "id": f"a{len(results)}", "origin": "prediction-changed",
                            "value": {**value, "keypointlabels": [answer]}})
        exported.append({"id": number, "data": task["data"], "predictions": task["predictions"],
                         "annotations": [{"id": number, "result": results,
                                          "was_cancelled": False, "ground_truth": False}]})
    return exported


def test_round_trip_suggestions_to_label_studio_and_back(scenes, tmp_path):
    data = SyntheticDataset(scenes, "train")
    masks = {image_id: data.load_mask(i) for i, image_id in enumerate(data.image_ids)}
    rng = np.random.default_rng(0)
    suggestions = []
    for image_id, mask in masks.items():
        for y, x in rng.integers(0, SCENE_SIZE, size=(3, 2)):
            if mask[y, x] != data.ignore_index:
                suggestions.append(Suggestion(image_id, int(y), int(x), "kite", float(rng.random())))
    csv_path = tmp_path / "suggestions.csv"
    write_suggestions_csv(csv_path, suggestions)
    assert read_suggestions_csv(csv_path) == [
        Suggestion(s.image_id, s.y, s.x, s.suggested_class, round(s.score, 6)) for s in suggestions]

    root_relative = {r.image_id: str(r.image_path.relative_to(scenes)) for r in data.records}
    tasks = suggestion_tasks(suggestions, image_urls={k: local_files_url(v)
                                                      for k, v in root_relative.items()},
                             sizes={k: m.shape for k, m in masks.items()}, model_version="v1")
    export = tmp_path / "project-1-at-2026-12-07.json"
    export.write_text(json.dumps(completed_by_annotator(tasks, masks, data.classes)))

    table, _ = import_points("synthetic", scenes, "train", tmp_path / "points.parquet", [export])
    expected = {}
    for s in suggestions:
        expected.setdefault(s.image_id, set()).add((s.y, s.x, int(masks[s.image_id][s.y, s.x])))
    assert {k: {tuple(r) for r in table.for_image(k).tolist()} for k in table.image_ids} == expected
    # never the suggested class: every suggestion said "kite"
    written = read_points(tmp_path / "points.parquet")
    assert written.metadata["generation"] == {"imported_from": export.name, "format": "Label Studio"}
    assert written.classes == data.classes


def cvat_export(name: str, width: int, height: int, points: str, label: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version>'
            f'<image id="0" name="{name}" width="{width}" height="{height}">'
            f'<points label="{label}" occluded="0" source="manual" points="{points}" z_order="0">'
            f"</points></image></annotations>").encode()


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.prepare_points", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_the_job_imports_a_cvat_export_whatever_its_name(scenes, tmp_path):
    data = SyntheticDataset(scenes, "train")
    first = data.image_ids[0]
    export = tmp_path / "annotations.txt"  # told apart by content, not by name
    export.write_bytes(cvat_export(f"images/training/{first}.jpg", SCENE_SIZE, SCENE_SIZE,
                                   "3.5,7.9;31.2,0.4", "crate"))
    out = tmp_path / "points.parquet"
    result = run_prepare("--dataset", "synthetic", "--root", str(scenes), "--split", "train",
                         "--out", str(out), "--import", str(export), "--skip-check")
    assert result.returncode == 0, result.stderr
    assert "2 points in 4 train images of synthetic" in result.stdout
    crate = data.classes.index("crate")
    assert read_points(out).for_image(first).tolist() == [[0, 31, crate], [7, 3, crate]]


def test_the_job_names_an_unknown_class_in_one_error_line(scenes, tmp_path):
    first = SyntheticDataset(scenes, "train").image_ids[0]
    export = tmp_path / "annotations.xml"
    export.write_bytes(cvat_export(f"{first}.jpg", SCENE_SIZE, SCENE_SIZE, "3,7", "Crate"))
    result = run_prepare("--dataset", "synthetic", "--root", str(scenes), "--split", "train",
                         "--out", str(tmp_path / "p.parquet"), "--import", str(export),
                         "--skip-check")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {export}: unknown class 'Crate' (image {first}); the dataset's classes are "
        "sky, ground, water, wall, ball, crate, cone, kite"]
    assert not (tmp_path / "p.parquet").exists()


def test_a_tool_that_saw_another_size_is_refused(scenes, tmp_path):
    first = SyntheticDataset(scenes, "train").image_ids[0]
    export = tmp_path / "annotations.xml"
    export.write_bytes(cvat_export(f"{first}.jpg", 64, 64, "3,7", "sky"))
    with pytest.raises(DataError, match=rf"image {first}: the labelling tool saw it as 64x64 "
                                        rf"but it is 32x32 \(WxH\)"):
        import_points("synthetic", scenes, "train", tmp_path / "p.parquet", [export])


def test_images_the_split_does_not_have_are_refused(scenes, tmp_path):
    export = tmp_path / "annotations.xml"
    export.write_bytes(cvat_export("holiday.jpg", SCENE_SIZE, SCENE_SIZE, "3,7", "sky"))
    with pytest.raises(DataError, match="1 image id.s. not in the synthetic train split.*holiday"):
        import_points("synthetic", scenes, "train", tmp_path / "p.parquet", [export])


def test_the_project_s_own_files_still_import(scenes, tmp_path):
    first = SyntheticDataset(scenes, "train").image_ids[0]
    (tmp_path / "clicks.csv").write_text(f"image_id,y,x,class_id\n{first},1,2,3\n")
    (tmp_path / "clicks.json").write_text(json.dumps({first: [{"y": 4, "x": 5, "cls": 6}]}))
    write_points(tmp_path / "clicks.parquet", [(first, 7, 8, 1)])
    for name, row in (("clicks.csv", [1, 2, 3]), ("clicks.json", [4, 5, 6]),
                      ("clicks.parquet", [7, 8, 1])):
        table, _ = import_points("synthetic", scenes, "train", tmp_path / "out.parquet",
                                 [tmp_path / name])
        assert table.for_image(first).tolist() == [row]
        assert table.metadata["generation"] == {"imported_from": name}


def test_repeated_imports_merge_the_clicks_a_split_had_with_a_round_s(scenes, tmp_path):
    ids = SyntheticDataset(scenes, "train").image_ids
    had = tmp_path / "points_train.parquet"
    write_points(had, [(ids[0], 1, 1, 0), (ids[1], 2, 2, 1)])
    export = tmp_path / "annotations.xml"
    export.write_bytes(cvat_export(f"{ids[0]}.jpg", SCENE_SIZE, SCENE_SIZE, "5.5,6.5;1.2,1.7",
                                   "sky"))  # (1.2, 1.7) is pixel (1, 1): sky again, a repeat
    out = tmp_path / "round1.parquet"
    result = run_prepare("--dataset", "synthetic", "--root", str(scenes), "--split", "train",
                         "--out", str(out), "--import", str(had), "--import", str(export),
                         "--skip-check")
    assert result.returncode == 0, result.stderr
    table = read_points(out)
    assert table.for_image(ids[0]).tolist() == [[1, 1, 0], [6, 5, 0]]
    assert table.for_image(ids[1]).tolist() == [[2, 2, 1]]
    assert table.metadata["generation"] == {"imported_from": [had.name, export.name],
                                            "duplicates_dropped": 1}
    assert "3 points in 4 train images" in result.stdout and "1 exact duplicate" in result.stdout


def test_two_files_giving_one_pixel_two_classes_are_refused(scenes, tmp_path):
    first = SyntheticDataset(scenes, "train").image_ids[0]
    had = tmp_path / "points_train.parquet"
    write_points(had, [(first, 6, 5, 2)])
    export = tmp_path / "annotations.xml"
    export.write_bytes(cvat_export(f"{first}.jpg", SCENE_SIZE, SCENE_SIZE, "5.5,6.5", "sky"))
    with pytest.raises(DataError, match=rf"{had} \+ {export}: image {first}: pixel \(y=6, x=5\) "
                                        rf"is labelled with two classes, 0 and 2"):
        import_points("synthetic", scenes, "train", tmp_path / "p.parquet", [had, export])
