"""The one exception bad input data ends in."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent.

    The message starts with the file, folder or key at fault, then says what is wrong,
    so a user can fix the input without reading a traceback::

        DataError("data/ade/annotations/training/x.png", "label PNG has mode RGB; ...")
    """

    def __init__(self, source: str | os.PathLike, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")

    def __reduce__(self):  # keep the two-argument form picklable (DataLoader workers, Ray)
        return type(self), (self.source, self.problem)
