"""Connecting to Ray: a running cluster when one is given, else a local one for this job."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

import ray

log = logging.getLogger(__name__)


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Use the caller's Ray if already initialised; else connect to ``address`` /
    ``RAY_ADDRESS`` (set by ``ray job submit``), else start a local Ray that is shut
    down on exit. Usage statistics stay off; RAY_TMPDIR decides where Ray's files go."""
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        log.info("no Ray cluster given: starting a local one")
        ray.init(include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("alembic", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
