"""Bad data on Ray: a split checked by tasks across the cluster before anything trains,
and a training run stopped at the first bad file a worker meets.

``check_split`` decodes every image and label map of a split (``jobs.check_data``,
``jobs.prepare_points``); ``check_headers`` reads only the headers, on the driver, before
``jobs.train`` starts workers. Tasks read the files by path: the dataset must be visible
at the same path on every node, as training needs it anyway.

``StopOnDataError`` is the Ray Train callback that keeps ``FailureConfig.max_failures``
for faults worth retrying (a lost node, a killed worker): the same file fails the same
way on every attempt.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import ray
from ray.train import UserCallback

from pdml_ray.data import DataError, SegmentationDataset, dataset_class
from pdml_ray.data.check import FileProblem, check_item, check_item_header, missing_partners

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitCheck:
    """What a check found: ``items`` image/label pairs looked at, ``problems`` by file."""

    dataset: str
    root: str
    split: str
    items: int
    seconds: float
    problems: list[FileProblem] = field(default_factory=list)
    tasks: int = 0  # Ray tasks used; 0: checked in this process

    @property
    def files_with_problems(self) -> int:
        return len({problem.path for problem in self.problems})


def open_split(dataset: str, root: str, split: str
               ) -> tuple[SegmentationDataset | None, list[FileProblem]]:
    """The split as a dataset; or None and every file missing its partner when the split
    cannot be listed (plus the listing's own error when it is about something else)."""
    cls = dataset_class(dataset)
    try:
        return cls(root, split), []
    except DataError as error:
        problems = missing_partners(cls, root, split)
        if not any(problem.path == error.source for problem in problems):
            problems.insert(0, FileProblem.of(error))
        return None, problems


def _check_items(data: SegmentationDataset, indices: range, header_only: bool
                 ) -> list[FileProblem]:
    check = check_item_header if header_only else check_item
    return [problem for index in indices for problem in check(data, index)]


def default_chunk_size(num_items: int, num_cpus: float) -> int:
    """About four tasks per CPU (balance, a moving progress bar), at most 500 items each."""
    return max(1, min(500, math.ceil(num_items / max(4 * num_cpus, 1))))


def check_dataset(data: SegmentationDataset, *, header_only: bool = False,
                  local_below: int = 32, chunk_size: int = 0,
                  progress: Callable[[int], None] | None = None) -> tuple[list[FileProblem], int]:
    """``(problems sorted by file, Ray tasks used)`` of every item of an opened split.

    Up to ``local_below`` items are checked in this process; more go to Ray tasks of
    ``chunk_size`` items (0: automatic), one CPU each, which needs Ray initialised
    (``runtime.ray_session``). ``progress(n)`` is called as each ``n`` items are done.
    A task that dies (a decoder crashing its process) reports its items as not checked.
    """
    progress = progress or (lambda n: None)
    num_items, problems = len(data), []
    if num_items <= local_below:
        for index in range(num_items):
            problems += _check_items(data, range(index, index + 1), header_only)
            progress(1)
        return sorted(problems), 0
    chunk_size = chunk_size or default_chunk_size(num_items, ray.cluster_resources().get("CPU", 1))
    data_ref = ray.put(data)
    task = ray.remote(num_cpus=1)(_check_items)
    pending = {}
    for first in range(0, num_items, chunk_size):
        indices = range(first, min(first + chunk_size, num_items))
        pending[task.remote(data_ref, indices, header_only)] = indices
    tasks = len(pending)
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        indices = pending.pop(done)
        try:
            problems += ray.get(done)
        except ray.exceptions.RayError as exc:
            reason = str(exc).strip().splitlines()[0]
            problems += [FileProblem(str(data.records[index].image_path),
                                     f"not checked: the task checking it failed ({reason})")
                         for index in indices]
        progress(len(indices))
    return sorted(problems), tasks


def check_split(dataset: str, root: str, split: str, **options) -> SplitCheck:
    """Open a split and check every item (``options``: those of :func:`check_dataset`)."""
    start = time.monotonic()
    data, problems = open_split(dataset, root, split)
    items, tasks = 0, 0
    if data is not None:
        items = len(data)
        problems, tasks = check_dataset(data, **options)
    return SplitCheck(dataset, str(root), split, items, time.monotonic() - start, problems, tasks)


def check_headers(data: SegmentationDataset) -> list[FileProblem]:
    """Header-level problems of every item of an opened split, in this process."""
    return _check_items(data, range(len(data)), header_only=True)


# -- bad data met inside a training run ------------------------------------------------
# What a DataLoader worker process's DataError becomes in the training process: torch
# cannot rebuild it (two arguments) and raises RuntimeError with the traceback as text.
_LOADER_PREFIX = "Caught DataError in DataLoader worker process"
_DATA_ERROR_LINE = f"{DataError.__module__}.{DataError.__qualname__}: "


def as_data_error(error: BaseException) -> DataError | None:
    """The DataError a Train worker failed with, directly or through a DataLoader worker
    process; None for any other failure."""
    if isinstance(error, DataError):
        return error
    text = str(error)
    if isinstance(error, RuntimeError) and text.startswith(_LOADER_PREFIX):
        lines = [line for line in text.splitlines() if line.startswith(_DATA_ERROR_LINE)]
        if lines:
            source, _, problem = lines[-1][len(_DATA_ERROR_LINE):].partition(": ")
            return DataError(source, problem)
    return None


def data_error_of_run(error: BaseException) -> DataError | None:
    """The DataError behind a failed ``fit()`` that :class:`StopOnDataError` ended."""
    failure = getattr(error, "controller_failure", None)  # ray.train.ControllerError
    return failure if isinstance(failure, DataError) else None


class StopOnDataError(UserCallback):
    """Ends a Ray Train run as soon as a worker fails on bad data, without retries.

    Ray Train retries every worker failure up to ``FailureConfig.max_failures`` times; a
    corrupt file fails the same way each time, so the retries only cost time (from the
    last checkpoint: an epoch or more on a cluster). Runs on the Train controller: an
    exception raised here is a controller error, which the default failure policy does
    not retry; ``fit()`` returns at once with ``result.error.controller_failure`` set to
    the DataError (see :func:`data_error_of_run`).
    """

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        for rank, error in sorted(worker_exceptions.items()):
            data_error = as_data_error(error)
            if data_error is not None:
                log.error("rank %d met bad data, stopping the run without retries: %s", rank,
                          data_error)
                raise data_error
