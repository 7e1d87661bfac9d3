"""What a round writes for Label Studio, without Ray: tasks whose images Label Studio
serves from the dataset root, and the labelling config beside them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pdml_ray.data import SyntheticDataset
from pdml_ray.labelling.candidates import Candidates
from pdml_ray.labelling.label_studio import image_id_from_url
from pdml_ray.labelling.suggestions import Suggestion
from pdml_ray.service.infer.round import SuggestRequest, _write_suggestions
from pdml_ray.service.infer.suggest import ScoredImages


def test_label_studio_tasks_and_config_are_written_beside_each_other(suggest_setup, tmp_path):
    data = SyntheticDataset(suggest_setup.scenes, "train")
    first, second = data.image_ids[:2]
    suggestions = [Suggestion(second, 5, 6, "ball", 0.8), Suggestion(first, 1, 2, "sky", 0.7)]
    scored = ScoredImages(np.array([first, second], dtype=object), Candidates.empty(),
                          {first: (32, 32), second: (32, 32)}, 6, 0, 1.0, 0.0)
    request = SuggestRequest(model_uri="m", dataset="synthetic", root=suggest_setup.scenes,
                             split="train", points=None, budget=2, out=tmp_path / "tasks.json",
                             tracking_uri=suggest_setup.uri, format="label-studio")
    files = _write_suggestions(request, data, suggestions, scored, "m v1")
    assert files == [tmp_path / "tasks.json", tmp_path / "tasks.labelling-config.xml"]
    tasks = json.loads(files[0].read_text())
    assert [t["data"]["image"] for t in tasks] == [
        f"/data/local-files/?d=images%2Ftraining%2F{second}.jpg",
        f"/data/local-files/?d=images%2Ftraining%2F{first}.jpg"]
    assert [image_id_from_url(t["data"]["image"]) for t in tasks] == [second, first]
    assert (Path(suggest_setup.scenes) / "images" / "training" / f"{first}.jpg").exists()
    assert '<Label value="kite"' in files[1].read_text()

    request = SuggestRequest(**{**request.__dict__, "image_url_prefix": "https://cdn/x/"})
    tasks = json.loads(_write_suggestions(request, data, suggestions, scored, "m")[0].read_text())
    assert tasks[0]["data"]["image"] == f"https://cdn/x/{second}.jpg"
