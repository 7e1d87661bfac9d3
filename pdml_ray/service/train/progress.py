"""The training console on the driver: epoch lines and progress bars from the workers.

Ray Train V2 runs its callbacks on the Train controller, an actor whose output reaches
the driver only as prefixed log lines (hidden by default), and its ``report`` results
feed Tune's scheduler in a sweep, so they cannot carry progress within an epoch. The
workers post to a small :class:`ProgressBoard` actor instead: rank 0 its progress and
each finished epoch, every rank the warnings it logs. The driver drains the board from
a thread while ``fit()`` runs and prints through :mod:`pdml_ray.console`. A sweep's
driver prints its trials' lines from Tune's own results (:class:`TrialLines`).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

import ray
from ray import tune

from pdml_ray.console import EpochClock, EpochProgress, format_duration

log = logging.getLogger(__name__)

POST_EVERY_S = 0.5  # rank 0 posts its progress at most this often


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Events from the workers, kept until the driver drains them. Only the newest
    progress event waits, so an undrained board stays small."""

    def __init__(self):
        self.events: list[dict] = []

    def post(self, event: dict) -> None:
        if event["kind"] == "progress" and self.events and self.events[-1]["kind"] == "progress":
            self.events[-1] = event
        else:
            self.events.append(event)

    def drain(self) -> list[dict]:
        events, self.events = self.events, []
        return events


def board_name(run_name: str) -> str:
    return f"pdml-progress-{run_name}"


class _WarningsToBoard(logging.Handler):
    """Our warnings and errors logged in a worker, sent to the driver's console."""

    def __init__(self, board, rank: int):
        super().__init__(level=logging.WARNING)
        self.board, self.rank = board, rank

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.board.post.remote({"kind": "warning", "level": record.levelno,
                                    "message": f"rank {self.rank}: {record.getMessage()}"})
        except Exception:  # the driver is gone; the line is in the worker's log anyway
            self.handleError(record)


class WorkerProgress:
    """What a worker posts to the board (rank 0: progress and epochs; all: warnings)."""

    def __init__(self, name: str, *, rank: int, forward_warnings: bool):
        self.board = ray.get_actor(name)
        self.rank = rank
        self.loss: float | None = None
        self.posted_at = 0.0
        self.handler = None
        if forward_warnings:
            self.handler = _WarningsToBoard(self.board, rank)
            logging.getLogger("pdml_ray").addHandler(self.handler)

    def batches(self, loader: Iterable, *, epoch: int, epochs: int, total: int) -> Iterator:
        """``loader``'s batches; rank 0 posts how many steps of the epoch are done."""
        for done, batch in enumerate(loader):
            now = time.monotonic()
            if self.rank == 0 and now - self.posted_at >= POST_EVERY_S:
                self.posted_at = now
                self.board.post.remote({"kind": "progress", "epoch": epoch, "epochs": epochs,
                                        "done": done, "total": total, "loss": self.loss})
            yield batch

    def epoch_done(self, epoch: int, epochs: int, seconds: float, *, loss: float | None,
                   val_miou: float | None = None, pixel_acc: float | None = None) -> None:
        if self.rank == 0:
            self.board.post.remote({"kind": "epoch", "epoch": epoch, "epochs": epochs,
                                    "seconds": seconds, "loss": loss, "val_miou": val_miou,
                                    "pixel_acc": pixel_acc})

    def close(self) -> None:
        if self.handler is not None:
            logging.getLogger("pdml_ray").removeHandler(self.handler)


def render(events: list[dict], progress: EpochProgress, clock: EpochClock) -> None:
    for event in events:
        if event["kind"] == "progress":
            progress.update(event["epoch"], event["epochs"], event["done"], event["total"],
                            event["loss"])
        elif event["kind"] == "epoch":
            progress.write(clock.line(event["epoch"], event["epochs"], event["seconds"],
                                      val_miou=event["val_miou"], pixel_acc=event["pixel_acc"],
                                      loss=event["loss"]))
        else:
            label = "error" if event["level"] >= logging.ERROR else "warning"
            progress.write(f"{label}: {event['message']}")


@contextmanager
def console_board(run_name: str, *, poll_s: float = 0.5) -> Iterator[str]:
    """A board for this run, drained onto the console until the block ends; yields its
    actor name for the workers."""
    name = board_name(run_name)
    board = ProgressBoard.options(name=name, get_if_exists=True).remote()
    progress, clock = EpochProgress(), EpochClock()
    stop = threading.Event()

    def drain_once() -> None:
        render(ray.get(board.drain.remote(), timeout=30), progress, clock)

    def drain_until_stopped() -> None:
        while not stop.wait(poll_s):
            try:
                drain_once()
            except ray.exceptions.RayError as exc:  # the console must not end the run
                log.debug("progress board unreachable: %s", exc)

    thread = threading.Thread(target=drain_until_stopped, name="pdml-console", daemon=True)
    thread.start()
    try:
        yield name
    finally:
        stop.set()
        thread.join()
        try:
            drain_once()  # the last epoch's line
        except ray.exceptions.RayError as exc:
            log.debug("progress board unreachable: %s", exc)
        progress.close()
        ray.kill(board)


class TrialLines(tune.Callback):
    """One console line per trial evaluation, in ``jobs.train``'s epoch-line style, and one
    when a trial ends; runs in the sweep's driver, beside Tune's own status table."""

    def __init__(self, epochs: int, print_line=None):
        # None: the builtin print, looked up when printing. Tune pickles its callbacks,
        # and a reference to `print` taken here fails to pickle wherever something (Ray's
        # log redirection, a test's capture) has replaced builtins.print since.
        self.epochs, self._print_line = epochs, print_line
        self.clocks: dict[str, EpochClock] = {}

    def print_line(self, *args, **kwargs) -> None:
        (self._print_line or print)(*args, **kwargs)

    @staticmethod
    def label(trial) -> str:
        """``trial ab12_00001 (margin 8, threshold 0.5)``: the id and the swept values."""
        swept = {key: value for key, value in (trial.config or {}).items()
                 if isinstance(value, (int, float))}
        values = ", ".join(f"{key.split('.')[-1]} {value:g}" for key, value in swept.items())
        return f"trial {trial.trial_id}" + (f" ({values})" if values else "")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "val_miou" not in result:
            return
        clock = self.clocks.setdefault(trial.trial_id, EpochClock())
        self.print_line(clock.line(int(result.get("epoch", result["training_iteration"])),
                                   self.epochs, float(result.get("time_this_iter_s", 0.0)),
                                   val_miou=result["val_miou"],
                                   pixel_acc=result.get("val_pixel_acc"),
                                   prefix=f"{self.label(trial)}  "), flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        clock = self.clocks.get(trial.trial_id)
        if clock is None or not clock.best_epoch:
            self.print_line(f"{self.label(trial)}  ended without an evaluation", flush=True)
            return
        self.print_line(f"{self.label(trial)}  ended: best val mIoU {clock.best_miou:.3f} "
                        f"@{clock.best_epoch} after {len(clock.durations)} evaluation(s), "
                        f"{format_duration(sum(clock.durations))}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.print_line(f"error: {self.label(trial)} failed; its error is in "
                        f"{trial.local_path or 'the Tune results folder'}", flush=True)
