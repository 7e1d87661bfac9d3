"""Label Studio: reading its JSON export of point clicks, writing tasks with the
suggestions as pre-annotations.

An export is a JSON list of tasks. A task's ``data.image`` names its image; each of its
``annotations`` (people's work; a cancelled one is skipped) holds a ``result`` list whose
``keypointlabels`` entries are clicks::

    {"type": "keypointlabels", "original_width": 640, "original_height": 480,
     "value": {"x": 12.5, "y": 40.0, "width": 0.8, "keypointlabels": ["ball"]}}

``x`` and ``y`` are percentages (0-100) of ``original_width`` and ``original_height``.
``predictions`` (the model's pre-annotations, which is where our suggestions go) are
never read back: the suggested class is a hint, and only what a person submitted is a
label. Results of other types (boxes, polygons) are left alone.

An image's id is the file stem of ``data.image``: a local-files URL
(``/data/local-files/?d=images%2Ftraining%2Fscene.jpg``) is URL-decoded first, and the
``<8 hex digits>-`` prefix Label Studio puts before the names of uploaded files
(``/data/upload/3/1a2b3c4d-scene.jpg``) is taken off.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import PurePosixPath
from typing import Any, Mapping, Sequence

from pdml_ray.data.errors import DataError

from .suggestions import Suggestion
from .tool_clicks import ToolClicks

FORMAT = "Label Studio"
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Names in the labelling config we write; tasks and config must agree on them.
CONTROL_NAME = "point"
IMAGE_NAME = "image"
POINT_WIDTH = 0.8  # how large Label Studio draws a point, percent of the image width


def image_id_from_url(url: str) -> str:
    """The image id (file stem) of a task's image URL or path."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    path = query["d"][0] if "d" in query else urllib.parse.unquote(parts.path)
    stem = PurePosixPath(path.replace("\\", "/")).stem
    if "/upload/" in parts.path:  # only uploads carry the prefix; a dataset's own names keep theirs
        stem = UPLOAD_PREFIX.sub("", stem)
    return stem


def local_files_url(relative_path: str) -> str:
    """The URL under which Label Studio serves a file below its local-files root
    (``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``)."""
    return "/data/local-files/?d=" + urllib.parse.quote(relative_path, safe="")


def _task_image(task: Mapping[str, Any]) -> str | None:
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("image"), str):
        return data["image"]
    # A project whose image field has another name: the one value naming an image file.
    named = [v for v in data.values() if isinstance(v, str)
             and urllib.parse.urlsplit(v).path.lower().endswith(IMAGE_SUFFIXES)]
    return named[0] if len(named) == 1 else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_label_studio(tasks: Any, source: str) -> ToolClicks:
    """The clicks of a Label Studio JSON export (already parsed from ``source``).

    Raises DataError naming ``source`` and the task on anything that is not the export
    format: a task without an image, a keypoint without its sizes, percentages outside
    0-100, a keypoint with no label or several.
    """
    if not isinstance(tasks, list):
        raise DataError(source, "a Label Studio export is a JSON list of tasks")
    found = ToolClicks(source, FORMAT)
    for number, task in enumerate(tasks):
        where = f"task {task.get('id', number) if isinstance(task, dict) else number}"
        if not isinstance(task, dict):
            raise DataError(source, f"{where}: expected a task object, got {type(task).__name__}")
        url = _task_image(task)
        if url is None:
            raise DataError(source, f"{where}: no image in its data ({json.dumps(task.get('data'))[:80]})")
        image_id = image_id_from_url(url)
        for annotation in task.get("annotations") or ():
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result") or ():
                if not isinstance(result, dict) or result.get("type") != "keypointlabels":
                    continue
                _read_keypoint(found, result, image_id, where)
    return found


def _read_keypoint(found: ToolClicks, result: Mapping[str, Any], image_id: str, where: str) -> None:
    value = result.get("value") or {}
    width, height = result.get("original_width"), result.get("original_height")
    if not (_number(width) and _number(height)):
        raise DataError(found.source, f"{where}: a keypoint without original_width and "
                                      f"original_height ({json.dumps(result)[:120]})")
    found.add_size(image_id, (int(height), int(width)), where)
    x, y = value.get("x"), value.get("y")
    if not (_number(x) and _number(y) and 0 <= x <= 100 and 0 <= y <= 100):
        raise DataError(found.source, f"{where}: keypoint x and y must be percentages 0-100, "
                                      f"got x={x!r}, y={y!r}")
    labels = value.get("keypointlabels")
    if not (isinstance(labels, list) and len(labels) == 1 and isinstance(labels[0], str)):
        raise DataError(found.source, f"{where}: a keypoint needs exactly one label, got "
                                      f"{json.dumps(labels)}")
    found.clicks.append((image_id, y / 100 * height, x / 100 * width, labels[0]))


def labelling_config(classes: Sequence[str], palette: Sequence[Sequence[int]]) -> str:
    """The project's labelling interface for point clicks in the dataset's classes (paste
    it under Settings > Labeling Interface > Code), named as the tasks expect."""
    labels = "\n".join(f'    <Label value="{_xml_attribute(name)}" '
                       f'background="#{r:02x}{g:02x}{b:02x}"/>'
                       for name, (r, g, b) in zip(classes, palette))
    return (f'<View>\n  <Image name="{IMAGE_NAME}" value="$image" zoom="true"/>\n'
            f'  <KeyPointLabels name="{CONTROL_NAME}" toName="{IMAGE_NAME}" strokeWidth="2">\n'
            f"{labels}\n  </KeyPointLabels>\n</View>\n")


def _xml_attribute(text: str) -> str:
    return (text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
            .replace(">", "&gt;"))


def suggestion_tasks(suggestions: Sequence[Suggestion], *, image_urls: Mapping[str, str],
                     sizes: Mapping[str, tuple[int, int]], model_version: str) -> list[dict]:
    """One Label Studio task per image with suggestions, each suggestion a pre-annotated
    keypoint at the centre of its pixel, labelled with the suggested class and numbered
    as in the CSV and the overlays (1 = the first picked).

    Args:
        suggestions: in pick order.
        image_urls: ``data.image`` of each image id (e.g. :func:`local_files_url`).
        sizes: ``(H, W)`` of each image.
        model_version: shown by Label Studio beside the predictions.
    """
    by_image: dict[str, list[tuple[int, Suggestion]]] = {}
    for rank, suggestion in enumerate(suggestions, start=1):
        by_image.setdefault(suggestion.image_id, []).append((rank, suggestion))
    tasks = []
    for image_id, ranked in by_image.items():
        height, width = sizes[image_id]
        results = [{
            "id": f"suggestion-{rank}", "from_name": CONTROL_NAME, "to_name": IMAGE_NAME,
            "type": "keypointlabels", "original_width": width, "original_height": height,
            "image_rotation": 0, "score": round(s.score, 6),
            "meta": {"text": [f"suggestion {rank}"]},
            "value": {"x": 100 * (s.x + 0.5) / width, "y": 100 * (s.y + 0.5) / height,
                      "width": POINT_WIDTH, "keypointlabels": [s.suggested_class]},
        } for rank, s in ranked]
        tasks.append({"data": {"image": image_urls[image_id], "image_id": image_id},
                      "predictions": [{"model_version": model_version,
                                       "score": round(max(s.score for _, s in ranked), 6),
                                       "result": results}]})
    return tasks
