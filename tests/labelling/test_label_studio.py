"""Label Studio's JSON export read as its documentation shows it, and tasks with
pre-annotations written for it."""

from __future__ import annotations

import json

import pytest

from pdml_ray.data import DataError
from pdml_ray.labelling.label_studio import (CONTROL_NAME, IMAGE_NAME, image_id_from_url,
                                             labelling_config, local_files_url,
                                             read_label_studio, suggestion_tasks)
from pdml_ray.labelling.suggestions import Suggestion
from pdml_ray.labelling.tool_clicks import to_point_table

CLASSES = ("sky", "ground", "Car", "ball")


def keypoint(x, y, label, width=1920, height=1280):
    """A result as the KeyPointLabels tag documents it."""
    return {"id": "kp1", "from_name": "kp", "to_name": "img", "type": "keypointlabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": 2, "keypointlabels": [label]}}


def task(image, *results, cancelled=False, predictions=()):
    return {"id": 1, "data": {"image": image},
            "annotations": [{"id": 1001, "result": list(results), "was_cancelled": cancelled,
                             "ground_truth": False, "completed_by": 10}],
            "predictions": list(predictions)}


@pytest.mark.parametrize("url, image_id", [
    ("/data/local-files/?d=images%2Ftraining%2Fsynthetic_train_00003.jpg", "synthetic_train_00003"),
    ("/data/local-files/?d=data/my%20photos/street%201.JPG", "street 1"),
    ("/data/upload/3/1a2b3c4d-ADE_train_00000001.jpg", "ADE_train_00000001"),
    ("http://localhost:8080/data/upload/12/deadbeef-scene.png", "scene"),
    ("https://example.com/opensource/label-studio/1.jpg", "1"),
    ("s3://bucket/images/deadbeef-scene.jpg", "deadbeef-scene"),  # not an upload: kept
    ("/data/local-files/?d=C:%5Cdata%5Cscene_7.jpg", "scene_7"),
])
def test_image_id_is_the_file_stem_of_the_task_image(url, image_id):
    assert image_id_from_url(url) == image_id


def test_the_documented_keypoint_lands_on_the_pixel_holding_it():
    # x 3.1% of 1920 = 59.52 -> column 59; y 8.2% of 1280 = 104.96 -> row 104
    clicks = read_label_studio([task("/data/upload/1/0a1b2c3d-street.jpg",
                                     keypoint(3.1, 8.2, "Car"))], "export.json")
    table = to_point_table(clicks, CLASSES)
    assert table.for_image("street").tolist() == [[104, 59, 2]]
    assert clicks.sizes == {"street": (1280, 1920)}
    assert table.metadata["format"] == "Label Studio"


def test_edges_cancelled_annotations_predictions_and_other_shapes():
    box = {"type": "rectanglelabels", "original_width": 10, "original_height": 10,
           "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["sky"]}}
    export = [
        task("a.jpg", keypoint(100, 100, "sky", 10, 10), keypoint(0, 0, "ground", 10, 10), box,
             predictions=[{"model_version": "m", "result": [keypoint(50, 50, "ball", 10, 10)]}]),
        task("b.jpg", keypoint(50, 50, "sky", 10, 10), cancelled=True),
    ]
    table = to_point_table(read_label_studio(export, "e.json"), CLASSES)
    # (100%, 100%) is the far corner: the last pixel; the prediction and box are not read
    assert table.for_image("a").tolist() == [[0, 0, 1], [9, 9, 0]]
    assert "b" not in table


def test_an_unknown_class_name_is_one_error_naming_it():
    clicks = read_label_studio([task("x.jpg", keypoint(5, 5, "Person"))], "export.json")
    with pytest.raises(DataError, match=r"^export.json: unknown class 'Person' \(image x\); "
                                        r"the dataset's classes are sky, ground, Car, ball$"):
        to_point_table(clicks, CLASSES)


@pytest.mark.parametrize("export, message", [
    ({"tasks": []}, "a Label Studio export is a JSON list of tasks"),
    ([{"id": 4, "data": {"text": "hello"}}], "task 4: no image in its data"),
    ([task("x.jpg", keypoint(101, 5, "sky"))], "task 1: keypoint x and y must be percentages"),
    ([task("x.jpg", {**keypoint(5, 5, "sky"), "original_width": None})],
     "task 1: a keypoint without original_width and original_height"),
    ([task("x.jpg", {**keypoint(5, 5, "sky"), "value": {"x": 5, "y": 5, "keypointlabels": []}})],
     "task 1: a keypoint needs exactly one label"),
    ([task("x.jpg", keypoint(5, 5, "sky", 10, 10)), task("x.jpg", keypoint(5, 5, "sky", 20, 10))],
     "image x is given as 20x10 here and 10x10 elsewhere"),
])
def test_malformed_exports_are_refused_saying_where(export, message):
    with pytest.raises(DataError, match=message):
        read_label_studio(export, "e.json")


def test_no_points_is_an_error():
    with pytest.raises(DataError, match="Label Studio file holds no points"):
        to_point_table(read_label_studio([task("x.jpg")], "e.json"), CLASSES)


def test_tasks_carry_numbered_pre_annotations_at_pixel_centres():
    suggestions = [Suggestion("scene_b", 3, 4, "ball", 0.9), Suggestion("scene_a", 0, 9, "sky", 0.7),
                   Suggestion("scene_b", 7, 0, "ground", 0.5)]
    tasks = suggestion_tasks(suggestions, image_urls={"scene_a": local_files_url("a/scene_a.jpg"),
                                                      "scene_b": "/b.jpg"},
                             sizes={"scene_a": (10, 10), "scene_b": (8, 20)}, model_version="v3")
    json.dumps(tasks)  # what Label Studio imports is JSON
    assert [t["data"]["image"] for t in tasks] == ["/b.jpg", "/data/local-files/?d=a%2Fscene_a.jpg"]
    results = tasks[0]["predictions"][0]["result"]
    assert tasks[0]["predictions"][0]["model_version"] == "v3"
    assert [r["meta"]["text"] for r in results] == [["suggestion 1"], ["suggestion 3"]]
    assert results[0]["value"]["x"] == pytest.approx(100 * 4.5 / 20)
    assert results[0]["value"]["y"] == pytest.approx(100 * 3.5 / 8)
    assert results[0]["value"]["keypointlabels"] == ["ball"]
    assert {(r["from_name"], r["to_name"], r["type"]) for r in results} == {
        (CONTROL_NAME, IMAGE_NAME, "keypointlabels")}


def test_the_labelling_config_names_every_class_with_its_colour():
    config = labelling_config(["sky", 'a "b"'], [(70, 130, 180), (0, 0, 255)])
    assert f'<KeyPointLabels name="{CONTROL_NAME}" toName="{IMAGE_NAME}"' in config
    assert '<Label value="sky" background="#4682b4"/>' in config
    assert '<Label value="a &quot;b&quot;" background="#0000ff"/>' in config
    import xml.etree.ElementTree as ElementTree
    labels = ElementTree.fromstring(config).find("KeyPointLabels")
    assert [label.get("value") for label in labels] == ["sky", 'a "b"']
