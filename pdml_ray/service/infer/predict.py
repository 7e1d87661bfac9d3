"""``jobs.predict`` on Ray Data: the images stream through an actor pool holding one model
per actor.

    read (on the driver's node)  ->  predict (actor pool)  ->  written by the driver

The files are read by a stage pinned to the driver's node, and the actors return PNG
bytes that the driver writes: worker nodes need neither the input nor the output folder
(as under ``ray job submit``, where only the head node has the job's files). Ray Data's
streaming executor bounds what is in flight, so the driver never holds more than a few
batches of image files however many there are.

Failures stay per image: an image that cannot be read or decoded comes back with its
reason. A batch whose actor dies (a segfault in a decoder, the OOM killer) is dropped
rather than retried (``max_task_retries=0``: retrying an image that kills its actor would
kill actor after actor) and the dataset goes on without it (``max_errored_blocks=-1``);
the driver then reports that batch's images as failed. Ray restarts the dead actor for
the batches still to come. With Ray 2.60 such a restarted actor now and then outlives the
dataset, holding its CPU until the driver ends: no matter for ``jobs.predict``, whose
driver ends with the job, but a long-lived driver calling this on a shared cluster may
want to know.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import ray

from pdml_ray.data.io import MAX_IMAGE_PIXELS
from pdml_ray.inference import SceneParser
from pdml_ray.service.infer.actor_pool import ActorModel, quiet_ray_data
from pdml_ray.service.predict import (IMAGE_ERRORS, PredictionOutcome, failure_reason,
                                      output_stems, read_source, render, write_outputs)

LOST_BATCH = "its Ray Data batch failed (the actor holding it died: a crash or out of memory)"


def read_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Batch ``{index, path}`` -> ``{index, data, error}``: each file's bytes, or why there
    are none (a missing file, a folder, a broken symlink)."""
    data, errors = [], []
    for path in batch["path"]:
        try:
            data.append(read_source(Path(str(path))))
            errors.append("")
        except ValueError as exc:
            data.append(b"")
            errors.append(str(exc))
    return {"index": batch["index"], "data": np.array(data, dtype=object),
            "error": np.array(errors, dtype=object)}


class Predictor:
    """Batch ``{index, data, error}`` -> ``{index, classes_png, overlay_png, present,
    error}``, from one model built once per actor (``present``: the class ids in the
    prediction, comma-separated)."""

    def __init__(self, model: ActorModel, threads: int, alpha: float, options: dict,
                 max_pixels: int):
        self.parser = model.parser(threads)
        self.alpha, self.options, self.max_pixels = alpha, options, max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns: dict[str, list] = {"classes_png": [], "overlay_png": [], "present": [],
                                    "error": []}
        for data, error in zip(batch["data"], batch["error"]):
            classes_png = overlay_png = b""
            present = ()
            if not error:
                try:
                    classes_png, overlay_png, present = render(
                        self.parser, data, alpha=self.alpha, options=self.options,
                        max_pixels=self.max_pixels)
                except IMAGE_ERRORS as exc:
                    error = failure_reason(exc)
            columns["classes_png"].append(classes_png)
            columns["overlay_png"].append(overlay_png)
            columns["present"].append(",".join(map(str, present)))
            columns["error"].append(error)
        return {"index": batch["index"],
                **{name: np.array(values, dtype=object) for name, values in columns.items()}}


@contextlib.contextmanager
def batches_may_fail() -> Iterator[None]:
    """A failed batch is dropped and the dataset goes on (the caller accounts for its
    images), instead of ending the whole prediction."""
    context = ray.data.DataContext.get_current()
    before = context.max_errored_blocks
    context.max_errored_blocks = -1
    try:
        yield
    finally:
        context.max_errored_blocks = before


def predict_on_ray_data(parser: SceneParser, sources: Sequence[Path], out_dir: Path, *,
                        actors: int, batch_size: int = 4, alpha: float = 0.5,
                        options: Mapping | None = None, max_pixels: int = MAX_IMAGE_PIXELS,
                        cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0
                        ) -> Iterator[list[PredictionOutcome]]:
    """Predict ``sources`` on the connected Ray cluster (see the module docstring) with
    ``actors`` models at once; yields the outcomes of each batch as it is written, and
    at the end the images of batches that were lost."""
    quiet_ray_data()
    stems = output_stems(sources)
    model = ActorModel.put(parser.model.state_dict(), parser.cfg.to_dict())
    items = [{"index": index, "path": str(path)} for index, path in enumerate(sources)]
    # Ray's own way to pin local reads to the driver (as for local:// paths).
    driver_node = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    written: set[int] = set()
    with batches_may_fail(), warnings.catch_warnings():
        # max_task_retries has no named parameter yet (Ray 2.60) beside the deprecated
        # ray_remote_args; the warning would reach the user's console on every run.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated",
                                category=DeprecationWarning)
        dataset = (
            # One block per batch: the pool takes work in batch-sized pieces as it frees up.
            ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch_size)))
            # Reading is I/O: no CPU reserved, so it never waits for the actors' CPUs.
            .map_batches(read_files, batch_size=batch_size, batch_format="numpy", num_cpus=0,
                         label_selector=driver_node)
            # One batch at a time per actor: a batch that kills its actor takes no queued
            # batch with it (prefetching the next batch saves little beside a forward pass).
            .map_batches(Predictor, compute=ray.data.ActorPoolStrategy(
                             size=actors, max_tasks_in_flight_per_actor=1),
                         batch_size=batch_size, batch_format="numpy", num_cpus=cpus_per_actor,
                         num_gpus=gpus_per_actor, max_task_retries=0,
                         fn_constructor_kwargs={
                             "model": model, "threads": max(1, int(cpus_per_actor)),
                             "alpha": alpha, "options": dict(options or {}),
                             "max_pixels": max_pixels}))
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            outcomes = []
            for index, classes_png, overlay_png, present, error in zip(
                    batch["index"], batch["classes_png"], batch["overlay_png"],
                    batch["present"], batch["error"]):
                index = int(index)
                written.add(index)
                if error:
                    outcomes.append(PredictionOutcome(sources[index], error=str(error)))
                    continue
                outputs = write_outputs(out_dir, stems[index], classes_png, overlay_png)
                classes = tuple(int(c) for c in str(present).split(",") if c)
                outcomes.append(PredictionOutcome(sources[index], outputs,
                                                  classes_present=classes))
            yield outcomes
    lost = [PredictionOutcome(source, error=LOST_BATCH)
            for index, source in enumerate(sources) if index not in written]
    if lost:
        yield lost
