"""A suggestion round on a real local Ray: the Ray Data actor pool gives the suggestions
the pure code gives image by image in this process, the files and the MLflow run hold
them, and the overlays number them."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from pdml_ray.data import SyntheticDataset, read_points
from pdml_ray.data.io import read_image
from pdml_ray.inference import SceneParser
from pdml_ray.labelling.candidates import Candidates
from pdml_ray.labelling.coverage import LabelledEmbeddings, typical_spacing
from pdml_ray.labelling.scoring import (ScoringSettings, embeddings_at_clicks, forward,
                                        image_candidates, working_view)
from pdml_ray.labelling.suggestions import pick_suggestions, read_suggestions_csv
from pdml_ray.service.infer.round import SuggestRequest, suggest_round

BUDGET = 9


def suggestions_without_ray(setup, settings):
    """The same round, one image at a time in this process."""
    torch.set_num_threads(1)  # as each actor runs: the same sums in the same order
    model = SceneParser.from_state(setup.state_dict, setup.config).model.eval()
    data = SyntheticDataset(setup.scenes, "train")
    table = read_points(setup.points)
    outputs = {}
    for index, image_id in enumerate(data.image_ids):
        image = data.load_image(index)
        view = working_view(image, 32)
        outputs[image_id] = (image, view, *forward(model, view))
    bank = LabelledEmbeddings.concatenate(
        [embeddings_at_clicks(embed, view.shape[:2], table.for_image(i), image.shape[:2])
         for i, (image, view, _, embed) in outputs.items() if i in table], dim=0)
    spacing = typical_spacing(bank)
    ids, parts = [], []
    for image_id, (image, _, logits, embed) in outputs.items():
        found = image_candidates(logits, embed, table.for_image(image_id), image.shape[:2],
                                 bank, spacing, settings)
        ids += [image_id] * len(found)
        parts.append(found)
    joined = Candidates(*(np.concatenate([getattr(p, name) for p in parts])
                          for name in ("y", "x", "region", "tier", "predicted_class", "score")))
    return pick_suggestions(ids, joined, BUDGET, data.classes)


@pytest.mark.ray
def test_a_round_on_ray_data_matches_the_pure_ranking(ray_cluster, suggest_setup, tmp_path):
    settings = ScoringSettings(strategy="margin+coverage")
    request = SuggestRequest(
        model_uri="models:/pdml-scene-parser@champion", dataset="synthetic",
        root=suggest_setup.scenes, split="train", points=suggest_setup.points, budget=BUDGET,
        out=tmp_path / "suggestions.csv", tracking_uri=suggest_setup.uri, settings=settings,
        overlays=tmp_path / "overlays", actors=2, batch_size=2,
        artifact_location=str(tmp_path / "artifacts"))
    result = suggest_round(request, say=lambda line: None)

    expected = suggestions_without_ray(suggest_setup, settings)
    written = read_suggestions_csv(request.out)
    assert [(s.image_id, s.y, s.x, s.suggested_class) for s in written] == [
        (s.image_id, s.y, s.x, s.suggested_class) for s in expected]
    assert [s.score for s in written] == pytest.approx([s.score for s in expected], abs=1e-5)
    with open(request.out, newline="") as file:
        assert next(csv.reader(file)) == ["image_id", "y", "x", "suggested_class", "score"]
    assert result.scored.images == 6 and result.scored.bank_points == read_points(
        suggest_setup.points).num_points

    # one overlay per image with suggestions, enlarged from 32 px, numbered dots on it
    images = sorted({s.image_id for s in written})
    overlays = sorted(p.name for p in request.overlays.iterdir())
    assert overlays == [f"{i}_suggestions.png" for i in images]
    picture = np.asarray(Image.open(request.overlays / overlays[0]))
    photo = read_image(suggest_setup.scenes / "images" / "training" / f"{images[0]}.jpg")
    factor = picture.shape[0] // photo.shape[0]
    assert factor > 1 and not np.array_equal(picture[::factor, ::factor], photo)

    run = MlflowClient(suggest_setup.uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["budget"] == str(BUDGET)
    assert run.data.params["strategy"] == "margin+coverage"
    assert run.data.params["model_version"] == "1"
    assert run.data.metrics["suggestions"] == BUDGET
    assert run.data.metrics["images_per_s"] > 0
    logged = {a.path for a in MlflowClient(suggest_setup.uri).list_artifacts(result.run_id)}
    assert {"suggestions.csv", "score_histogram.png", "overlays"} <= logged


@pytest.mark.ray
def test_an_image_an_actor_cannot_decode_is_named(ray_cluster, suggest_setup, scenes_copy,
                                                  tmp_path):
    """A truncated JPEG (a valid header: the split lists it) fails in the actor that
    decodes it; the driver gets the DataError naming the file, not Ray Data's wrapper."""
    from pdml_ray.data import DataError

    image = scenes_copy / "images" / "training" / "synthetic_train_00004.jpg"
    image.write_bytes(image.read_bytes()[:-400])
    request = SuggestRequest(
        model_uri="models:/pdml-scene-parser@champion", dataset="synthetic", root=scenes_copy,
        split="train", points=None, budget=3, out=tmp_path / "s.csv",
        tracking_uri=suggest_setup.uri, settings=ScoringSettings(strategy="margin"), actors=1,
        artifact_location=str(tmp_path / "artifacts"))
    with pytest.raises(DataError, match=rf"^{image}: cannot decode image"):
        suggest_round(request, say=lambda line: None)
    assert not request.out.exists()
