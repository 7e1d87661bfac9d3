"""One round of the labelling loop, end to end: the split and its clicks checked, the
model read from the registry, the images scored on Ray Data (:mod:`.suggest`), the budget
spread, the suggestions written (CSV or Label Studio tasks, overlays) and the round
logged to MLflow (:mod:`.round_log`). ``jobs.suggest`` parses arguments and calls
:func:`suggest_round`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pdml_ray.config import ConfigError
from pdml_ray.data import DataError, SegmentationDataset, dataset_class, read_points
from pdml_ray.data.io import atomic_file, check_output_folder
from pdml_ray.data.points import PointTable
from pdml_ray.labelling.label_studio import (labelling_config, local_files_url,
                                             suggestion_tasks)
from pdml_ray.labelling.pictures import score_histogram, suggestion_overlay
from pdml_ray.labelling.scoring import ScoringSettings
from pdml_ray.labelling.suggestions import (Suggestion, pick_suggestions,
                                            write_suggestions_csv)
from pdml_ray.service.infer.actor_pool import default_actors
from pdml_ray.service.infer.round_log import log_round
from pdml_ray.service.infer.sources import (image_filesystem, image_sources, read_rgb)
from pdml_ray.service.infer.suggest import ScoredImages, score_images

FORMATS = ("csv", "label-studio")
LABEL_STUDIO_CONFIG_SUFFIX = ".labelling-config.xml"


@dataclass(frozen=True)
class SuggestRequest:
    """Everything a round needs; paths as given (the job resolves them)."""

    model_uri: str
    dataset: str
    root: Path
    split: str
    points: Path | None
    budget: int
    out: Path
    tracking_uri: str
    settings: ScoringSettings = ScoringSettings()
    format: str = "csv"
    overlays: Path | None = None
    actors: int | None = None  # None: as many as the cluster's CPUs (or GPUs) hold
    cpus_per_actor: float = 1.0
    use_gpu: bool = False
    batch_size: int = 4
    images_from: str | None = None  # a folder URI holding the split's image files
    image_url_prefix: str | None = None  # Label Studio's data.image = prefix + file name
    max_images: int = 0  # 0: the whole split
    experiment: str = "pdml-suggestions"
    artifact_location: str | None = None
    ray_address: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class RoundResult:
    suggestions: list[Suggestion]
    scored: ScoredImages
    model_version: str
    run_id: str
    files: list[Path]


def check_request(request: SuggestRequest) -> tuple[SegmentationDataset, PointTable | None]:
    """The split and its clicks, checked before any model or Ray: the split lists (every
    image with its label map), the points belong to this dataset and split."""
    if request.budget < 1:
        raise ConfigError(f"--budget: must be >= 1, got {request.budget}")
    if request.format not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {request.format!r}")
    check_output_folder(request.out.parent, "the folder of --out")
    if request.overlays is not None:
        check_output_folder(request.overlays, "--overlays")
    data = dataset_class(request.dataset)(request.root, request.split,
                                          max_images=request.max_images)
    table = None
    if request.points is not None:
        table = read_points(request.points)
        named = table.metadata.get("dataset")
        if named is not None and named != request.dataset:
            raise DataError(table.source, f"points of the {named} dataset, not of "
                                          f"{request.dataset}")
        split = table.metadata.get("split")
        if split is not None and split != request.split:
            raise DataError(table.source, f"points of the {split} split, not of {request.split}")
        data.check_points(table)
    return data, table


def suggest_round(request: SuggestRequest,
                  progress: Callable[[int], None] | None = None,
                  say: Callable[[str], None] = print) -> RoundResult:
    """Run one round (see the module docstring). Raises DataError, ConfigError or
    ModelNotFound (a FileNotFoundError) with a one-line message on bad input."""
    from pdml_ray.service.train.preflight import check_store_readable
    from pdml_ray.service.registry.load import load_scene_parser
    from pdml_ray.service.runtime import ray_session

    data, table = check_request(request)
    check_store_readable(request.tracking_uri)
    loaded = load_scene_parser(request.tracking_uri, request.model_uri, device="cpu")
    trained_on = loaded.parser.cfg.data.dataset
    if trained_on != request.dataset:
        raise ConfigError(f"--dataset {request.dataset}: model {request.model_uri} was trained "
                          f"on {trained_on} ({len(loaded.parser.classes)} classes)")
    version = loaded.version.version if loaded.version is not None else "unregistered"
    say(f"model {request.model_uri} (version {version}); {len(data)} {request.split} images of "
        f"{data.name}, {table.num_points if table else 0} existing clicks")

    filesystem, folder = image_filesystem(request.images_from)
    sources = image_sources([record.image_path for record in data.records], folder)
    clicks = {} if table is None else {i: table.for_image(i) for i in table.image_ids}
    with ray_session(request.ray_address):
        actors = request.actors or default_actors(request.use_gpu, request.cpus_per_actor)
        say(f"scoring on {actors} actor(s), strategy {request.settings.strategy}")
        scored = score_images(
            sources, filesystem=filesystem, state_dict=loaded.parser.model.state_dict(),
            config=loaded.parser.cfg.to_dict(), clicks=clicks, settings=request.settings,
            actors=actors, batch_size=request.batch_size, cpus_per_actor=request.cpus_per_actor,
            gpus_per_actor=1.0 if request.use_gpu else 0.0, seed=request.seed,
            max_pixels=data.max_image_pixels, progress=progress)
    suggestions = pick_suggestions(scored.image_ids, scored.candidates, request.budget,
                                   data.classes)
    files = _write_suggestions(request, data, suggestions, scored, f"{request.model_uri} v{version}")
    if request.overlays is not None:
        _write_overlays(request.overlays, data, suggestions, filesystem, sources)
    picked = np.asarray([s.score for s in suggestions])
    run_id = log_round(
        request.tracking_uri, experiment=request.experiment,
        artifact_location=request.artifact_location,
        run_name=f"suggest {request.budget} {request.settings.strategy}",
        params={"model": request.model_uri, "model_version": version,
                "model_run_id": loaded.run_id, "budget": request.budget,
                "strategy": request.settings.strategy, "dataset": request.dataset,
                "split": request.split, "points": request.points, "images": len(sources),
                "format": request.format, "actors": actors,
                "settings": json.dumps(request.settings.__dict__)},
        metrics={"suggestions": len(suggestions), "candidates": len(scored.candidates),
                 "images_with_suggestions": len({s.image_id for s in suggestions}),
                 "existing_clicks": table.num_points if table else 0,
                 "bank_points": scored.bank_points, "images_per_s": scored.images_per_second,
                 "scoring_s": scored.scoring_seconds, "bank_s": scored.bank_seconds,
                 "score_mean": float(picked.mean()) if len(picked) else 0.0,
                 "score_min": float(picked.min()) if len(picked) else 0.0},
        tags={"pdml.dataset": request.dataset, "pdml.model_version": version},
        files=files, overlays=request.overlays,
        histogram=score_histogram(scored.candidates.score, picked))
    return RoundResult(suggestions, scored, version, run_id, files)


def _write_suggestions(request: SuggestRequest, data: SegmentationDataset,
                       suggestions: list[Suggestion], scored: ScoredImages,
                       model_version: str) -> list[Path]:
    if request.format == "csv":
        write_suggestions_csv(request.out, suggestions)
        return [request.out]
    paths = {record.image_id: record.image_path for record in data.records}
    if request.image_url_prefix is not None:
        urls = {i: request.image_url_prefix + p.name for i, p in paths.items()}
    else:  # Label Studio serves files below LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT = the root
        urls = {i: local_files_url(os.path.relpath(p, data.root)) for i, p in paths.items()}
    tasks = suggestion_tasks(suggestions, image_urls=urls, sizes=scored.sizes,
                             model_version=model_version)
    with atomic_file(request.out) as tmp:
        tmp.write_text(json.dumps(tasks, indent=1))
    config = request.out.with_name(request.out.stem + LABEL_STUDIO_CONFIG_SUFFIX)
    with atomic_file(config) as tmp:
        tmp.write_text(labelling_config(data.classes, data.palette))
    return [request.out, config]


def _write_overlays(folder: Path, data: SegmentationDataset, suggestions: list[Suggestion],
                    filesystem, sources) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    where = {source.image_id: source.path for source in sources}
    colors = dict(zip(data.classes, data.palette))
    marks: dict[str, list[tuple[int, int, int, str]]] = {}
    for number, s in enumerate(suggestions, start=1):
        marks.setdefault(s.image_id, []).append((number, s.y, s.x, s.suggested_class))
    for image_id, image_marks in marks.items():
        image = read_rgb(filesystem, where[image_id], data.max_image_pixels)
        with atomic_file(folder / f"{image_id}_suggestions.png") as tmp:
            suggestion_overlay(image, image_marks, colors).save(tmp, format="PNG")
