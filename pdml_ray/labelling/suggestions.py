"""Suggested clicks and their CSV: ``image_id,y,x,suggested_class,score``, one row per
suggestion in the order they were picked (the first row is the first to label).

``y`` and ``x`` are the pixel (row, column from the top left) of the original image;
``suggested_class`` is the model's prediction there, a hint for the annotator that is
never imported as a label; ``score`` says how much the click is expected to help (the
ranking's score, in [0, 1]).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from pdml_ray.data.errors import DataError
from pdml_ray.data.io import atomic_file

from .candidates import Candidates
from .spread import spread_budget

CSV_COLUMNS = ("image_id", "y", "x", "suggested_class", "score")


@dataclass(frozen=True)
class Suggestion:
    image_id: str
    y: int
    x: int
    suggested_class: str
    score: float


def write_suggestions_csv(path: str | os.PathLike, suggestions: Iterable[Suggestion]) -> None:
    """Write the CSV atomically (a temp file, then renamed into place)."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for s in suggestions:
            writer.writerow((s.image_id, s.y, s.x, s.suggested_class, f"{s.score:.6f}"))


def read_suggestions_csv(path: str | os.PathLike) -> list[Suggestion]:
    """The suggestions of a CSV written by :func:`write_suggestions_csv`, in order."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
                raise DataError(path, f"expected the columns {','.join(CSV_COLUMNS)}, got "
                                      f"{','.join(reader.fieldnames or ())}")
            return [Suggestion(row["image_id"], int(row["y"]), int(row["x"]),
                               row["suggested_class"], float(row["score"])) for row in reader]
    except (OSError, ValueError, csv.Error) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(path, f"cannot read suggestions: {exc}") from None


def pick_suggestions(image_ids: Sequence[str], candidates: Candidates, budget: int,
                     classes: Sequence[str]) -> list[Suggestion]:
    """The budget spread over the candidates of many images (:func:`spread_budget`),
    as suggestions in pick order.

    Args:
        image_ids: ``(K,)`` the image of each candidate.
        candidates: the candidates of all images, concatenated.
        classes: the dataset's class names, for the suggested class.
    """
    image_ids = np.asarray(image_ids, dtype=object)
    picks = spread_budget(image_ids, candidates.tier, candidates.score, budget)
    return [Suggestion(str(image_ids[i]), int(candidates.y[i]), int(candidates.x[i]),
                       classes[int(candidates.predicted_class[i])], float(candidates.score[i]))
            for i in picks]
