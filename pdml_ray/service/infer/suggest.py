"""Scoring a split for the next clicks as Ray Data batch inference.

Images stream from their filesystem through ``map_batches`` with an actor pool
(``compute=ActorPoolStrategy(size=n)``), one model per actor, built once from weights put
once in the object store; actors read the image files themselves, so image bytes never
pass through the driver. Two passes:

1. the bank: embeddings at the existing clicks of up to ``bank_images`` images (a seeded
   sample), capped per class; they say which parts of embedding space labels cover;
2. the scoring: every image's logits and embeddings at the working resolution ranked
   (:mod:`pdml_ray.labelling.scoring`); each actor returns only its images' candidates
   (a few per predicted region), never score maps.

The driver then spreads the budget over all candidates (:func:`pick_suggestions`).
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow.fs as pafs
import ray
import torch

from pdml_ray.data.errors import DataError
from pdml_ray.data.io import MAX_IMAGE_PIXELS
from pdml_ray.labelling.candidates import Candidates
from pdml_ray.labelling.coverage import LabelledEmbeddings, typical_spacing
from pdml_ray.labelling.scoring import (ScoringSettings, embeddings_at_clicks, forward,
                                        image_candidates, working_view)
from pdml_ray.service.infer.actor_pool import ActorModel, quiet_ray_data
from pdml_ray.service.infer.sources import ImageSource, read_rgb

CANDIDATE_COLUMNS = ("y", "x", "region", "tier", "predicted_class", "score")
_NO_CLICKS = np.zeros((0, 3), dtype=np.int64)


class _ModelActor:
    """One model per actor, and the clicks of the split (a dict in the object store)."""

    def __init__(self, model: ActorModel, filesystem: pafs.FileSystem, clicks: list,
                 threads: int, max_pixels: int):
        parser = model.parser(threads)  # logits, and embeddings from the backbone features
        self.model, self.working_side = parser.model, parser.working_size
        self.filesystem = filesystem
        self.clicks: dict[str, np.ndarray] = ray.get(clicks[0])
        self.max_pixels = max_pixels

    def _outputs(self, image_id: str, path: str):
        image = read_rgb(self.filesystem, path, self.max_pixels)
        view = working_view(image, self.working_side)
        logits, embed = forward(self.model, view)
        return image, view, logits, embed, self.clicks.get(image_id, _NO_CLICKS)


class ClickEmbedder(_ModelActor):
    """Batch ``{image_id, path}`` -> one row per click: ``class_id`` and ``embedding``."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for image_id, path in zip(batch["image_id"], batch["path"]):
            image, view, _, embed, clicks = self._outputs(str(image_id), str(path))
            parts.append(embeddings_at_clicks(embed, view.shape[:2], clicks, image.shape[:2]))
        labelled = LabelledEmbeddings.concatenate(parts, dim=0)
        return {"class_id": labelled.classes.numpy(),
                "embedding": labelled.embeddings.numpy().astype(np.float32)}


class CandidateScorer(_ModelActor):
    """Batch ``{image_id, path}`` -> one row per candidate, with its image's id and size."""

    def __init__(self, model: ActorModel, filesystem: pafs.FileSystem, clicks: list,
                 threads: int, max_pixels: int, bank: list, spacing: float,
                 settings: ScoringSettings):
        super().__init__(model, filesystem, clicks, threads, max_pixels)
        embeddings, classes = ray.get(bank[0])
        # copied: arrays from the object store are read-only
        self.bank = LabelledEmbeddings(torch.tensor(embeddings), torch.tensor(classes))
        self.spacing = spacing
        self.settings = settings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns: dict[str, list] = {name: [] for name in
                                    ("image_id", "height", "width", *CANDIDATE_COLUMNS)}
        for image_id, path in zip(batch["image_id"], batch["path"]):
            image, _, logits, embed, clicks = self._outputs(str(image_id), str(path))
            found = image_candidates(logits, embed, clicks, image.shape[:2], self.bank,
                                     self.spacing, self.settings)
            columns["image_id"] += [str(image_id)] * len(found)
            columns["height"] += [image.shape[0]] * len(found)
            columns["width"] += [image.shape[1]] * len(found)
            for name in CANDIDATE_COLUMNS:
                columns[name] += getattr(found, name).tolist()
        return {name: np.asarray(values, dtype=object if name == "image_id"
                                 else np.float64 if name == "score" else np.int64)
                for name, values in columns.items()}


@dataclass
class ScoredImages:
    """Every candidate of a split, with the image it belongs to, and what scoring took."""

    image_ids: np.ndarray  # (K,) object
    candidates: Candidates
    sizes: dict[str, tuple[int, int]]
    images: int
    bank_points: int
    scoring_seconds: float
    bank_seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.scoring_seconds if self.scoring_seconds > 0 else float("nan")


def _dataset(sources: Sequence[ImageSource], batch_size: int):
    # One block per batch: the actor pool gets work in batch-sized pieces as it frees up.
    items = [{"image_id": s.image_id, "path": s.path} for s in sources]
    return ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch_size)))


def _map_options(actors: int, batch_size: int, cpus_per_actor: float, gpus_per_actor: float,
                 constructor: dict) -> dict:
    return {"compute": ray.data.ActorPoolStrategy(size=actors), "batch_size": batch_size,
            "batch_format": "numpy", "num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor,
            "fn_constructor_kwargs": constructor}


def _unwrap(exc: BaseException) -> BaseException:
    """The DataError a failed actor raised (a file it could not read), as a plain one
    (Ray's RayTaskError subclass of it carries the worker's traceback in its message),
    else ``exc``."""
    seen = exc
    while seen is not None:
        if isinstance(seen, DataError):
            return DataError(seen.source, seen.problem)
        cause = getattr(seen, "cause", None)
        seen = seen.__cause__ or (cause if isinstance(cause, BaseException) else None)
    return exc


@contextlib.contextmanager
def original_udf_errors() -> Iterator[None]:
    """Ray Data raises what a UDF raised, not a UserCodeException whose cause (lost on
    the way from the actor) would have been the DataError naming the file."""
    context = ray.data.DataContext.get_current()
    before = context.raise_original_map_exception
    context.raise_original_map_exception = True
    try:
        yield
    finally:
        context.raise_original_map_exception = before


def score_images(sources: Sequence[ImageSource], *, filesystem: pafs.FileSystem,
                 state_dict: Mapping[str, torch.Tensor], config: dict,
                 clicks: Mapping[str, np.ndarray], settings: ScoringSettings, actors: int,
                 batch_size: int = 4, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
                 bank_images: int = 256, bank_per_class: int = 1024, seed: int = 0,
                 max_pixels: int = MAX_IMAGE_PIXELS,
                 progress: Callable[[int], None] | None = None) -> ScoredImages:
    """Score ``sources`` on the connected Ray cluster (see the module docstring).

    Args:
        clicks: existing clicks per image id, ``(K, 3)`` rows ``(y, x, class_id)``.
        actors: the size of the actor pool (models held at once).
        cpus_per_actor: CPUs each actor reserves; torch uses as many threads.
        progress: called with the number of images of each finished batch.
    """
    quiet_ray_data()
    threads = max(1, int(cpus_per_actor))
    model = ActorModel.put(state_dict, config)
    clicks_ref = [ray.put({k: np.asarray(v, dtype=np.int64) for k, v in clicks.items()})]
    common = {"model": model, "filesystem": filesystem, "clicks": clicks_ref,
              "threads": threads, "max_pixels": max_pixels}
    with original_udf_errors():
        try:
            started = time.perf_counter()
            bank = LabelledEmbeddings.empty(0)
            clicked = [s for s in sources if len(clicks.get(s.image_id, _NO_CLICKS))]
            if settings.uses_coverage and clicked:
                chosen = random.Random(seed).sample(clicked, min(bank_images, len(clicked)))
                embedded = _dataset(chosen, batch_size).map_batches(
                    ClickEmbedder, **_map_options(actors, batch_size, cpus_per_actor,
                                                  gpus_per_actor, common))
                parts = [LabelledEmbeddings(torch.tensor(b["embedding"]),
                                            torch.tensor(b["class_id"]))
                         for b in embedded.iter_batches(batch_size=None, batch_format="numpy")
                         if len(b["class_id"])]
                bank = LabelledEmbeddings.concatenate(parts, dim=0).capped(bank_per_class, seed)
            bank_seconds = time.perf_counter() - started
            spacing = typical_spacing(bank)
            bank_ref = [ray.put((bank.embeddings.numpy().astype(np.float32),
                                 bank.classes.numpy()))]

            started = time.perf_counter()
            scored = _dataset(sources, batch_size).map_batches(
                CandidateScorer, **_map_options(
                    actors, batch_size, cpus_per_actor, gpus_per_actor,
                    {**common, "bank": bank_ref, "spacing": spacing, "settings": settings}))
            batches = []
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
                batches.append(batch)
                if progress is not None:
                    progress(len(set(batch["image_id"].tolist())))
            scoring_seconds = time.perf_counter() - started
        except Exception as exc:
            shown = _unwrap(exc)
            if shown is exc:
                raise
            raise shown from None
    return _collect(batches, len(sources), len(bank), scoring_seconds, bank_seconds)


def _collect(batches: list[dict[str, np.ndarray]], images: int, bank_points: int,
             scoring_seconds: float, bank_seconds: float) -> ScoredImages:
    batches = [b for b in batches if len(b["image_id"])]
    if not batches:
        return ScoredImages(np.zeros(0, dtype=object), Candidates.empty(), {}, images,
                            bank_points, scoring_seconds, bank_seconds)
    joined = {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
    sizes = {str(i): (int(h), int(w)) for i, h, w in
             zip(joined["image_id"], joined["height"], joined["width"])}
    candidates = Candidates(*(joined[name].astype(np.float64 if name == "score" else np.int64)
                              for name in CANDIDATE_COLUMNS))
    return ScoredImages(joined["image_id"].astype(object), candidates, sizes, images,
                        bank_points, scoring_seconds, bank_seconds)
