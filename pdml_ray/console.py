"""What a run prints: the settings that differ from the defaults, one line per epoch,
progress within an epoch, and how loud Ray and MLflow may be.

Pure formatting and timing (no Ray, no MLflow): the service feeds it what the workers
report. Verbosity comes from ``PDML_LOG_LEVEL`` (``--verbose`` sets it to DEBUG): at
WARNING, the default, Ray's and MLflow's own INFO lines are hidden and our warnings and
errors are still shown; at INFO or DEBUG everything is shown, as Ray and MLflow print it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from pdml_ray.config import Config, ConfigError

LOG_LEVEL_ENV = "PDML_LOG_LEVEL"
# Libraries whose INFO lines are internal detail (progress of Ray's start, MLflow's
# database migrations, HTTP retries); their warnings and errors are still shown.
QUIET_LIBRARIES = ("ray", "mlflow", "alembic", "urllib3", "filelock", "py4j", "git")
PROGRESS_EVERY_S = 30.0  # a progress line this often when output is not a terminal


# -- verbosity ---------------------------------------------------------------------------
def log_level() -> int:
    """The level ``PDML_LOG_LEVEL`` names (DEBUG, INFO, WARNING, ...); WARNING when unset."""
    name = os.environ.get(LOG_LEVEL_ENV, "").strip().upper() or "WARNING"
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise ConfigError(f"{LOG_LEVEL_ENV}: unknown level {name!r}; use DEBUG, INFO, WARNING "
                          "or ERROR")
    return level


def verbose() -> bool:
    """True when Ray's and MLflow's own lines should be shown (``--verbose``)."""
    return log_level() <= logging.INFO


class _ConsoleFormatter(logging.Formatter):
    """Our INFO lines as plain text; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


def configure_logging() -> None:
    """Quiet by default: our INFO lines bare, other libraries' below WARNING hidden.
    Verbose: every logger at ``PDML_LOG_LEVEL`` with time and source."""
    level = log_level()
    handler = logging.StreamHandler(sys.stderr)
    if level <= logging.INFO:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               datefmt="%H:%M:%S"))
        logging.basicConfig(level=level, handlers=[handler], force=True)
        return
    handler.setFormatter(_ConsoleFormatter("%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("pdml_ray").setLevel(logging.INFO)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


# -- the start -----------------------------------------------------------------------------
def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return "null" if value is None else str(value)


def changed_settings(cfg: Config, defaults: Config, *, include_sweep: bool = False) -> list[str]:
    """``["train.epochs=3", ...]``: the settings of ``cfg`` that differ from ``defaults``,
    in config order. Pass defaults resolved against the same project folder, so that
    paths anchored there do not count as changes."""
    before = defaults.flat(include_sweep=include_sweep)
    now = cfg.flat(include_sweep=include_sweep)
    return [f"{key}={_shown(value)}" for key, value in now.items() if before.get(key) != value]


def settings_summary(cfg: Config, defaults: Config, *, include_sweep: bool = False,
                     width: int = 100) -> str:
    """The start of a run's output: what differs from the defaults, wrapped to ``width``."""
    changed = changed_settings(cfg, defaults, include_sweep=include_sweep)
    if not changed:
        return "settings: the defaults"
    body = textwrap.fill("  ".join(changed), width=width, initial_indent="  ",
                         subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    return f"settings that differ from the defaults ({len(changed)}):\n{body}"


# -- epochs --------------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    """``43 s``, ``6 min``, ``2 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def epoch_line(epoch: int, epochs: int, *, seconds_per_epoch: float,
               val_miou: float | None = None, pixel_acc: float | None = None,
               best_miou: float | None = None, best_epoch: int | None = None,
               loss: float | None = None, prefix: str = "") -> str:
    """``epoch 7/15  val mIoU 0.184 (best 0.184 @7)  pixel acc 0.356  43 s/epoch  ~6 min left``.

    Epochs without an evaluation show the epoch's mean loss instead of the scores; the
    last epoch shows no time left.
    """
    parts = [f"{prefix}epoch {epoch}/{epochs}"]
    if val_miou is not None:
        best = "" if best_miou is None else f" (best {best_miou:.3f} @{best_epoch})"
        parts.append(f"val mIoU {val_miou:.3f}{best}")
        if pixel_acc is not None:
            parts.append(f"pixel acc {pixel_acc:.3f}")
    elif loss is not None:
        parts.append(f"loss {loss:.4f}")
    parts.append(f"{format_duration(seconds_per_epoch)}/epoch")
    if epoch < epochs:
        parts.append(f"~{format_duration(seconds_per_epoch * (epochs - epoch))} left")
    return "  ".join(parts)


@dataclass
class EpochClock:
    """The best score so far and the mean time per epoch over the epochs reported."""

    best_miou: float = -math.inf
    best_epoch: int = 0
    durations: list[float] = field(default_factory=list)

    def line(self, epoch: int, epochs: int, seconds: float, *, val_miou: float | None = None,
             pixel_acc: float | None = None, loss: float | None = None,
             prefix: str = "") -> str:
        """Record epoch ``epoch`` (1-based), which took ``seconds``, and describe it."""
        self.durations.append(seconds)
        if val_miou is not None and val_miou > self.best_miou:
            self.best_miou, self.best_epoch = val_miou, epoch
        has_best = val_miou is not None and self.best_epoch > 0
        return epoch_line(epoch, epochs, seconds_per_epoch=sum(self.durations) / len(self.durations),
                          val_miou=val_miou, pixel_acc=pixel_acc,
                          best_miou=self.best_miou if has_best else None,
                          best_epoch=self.best_epoch if has_best else None,
                          loss=loss, prefix=prefix)


# -- within an epoch -----------------------------------------------------------------------
def progress_line(epoch: int, epochs: int, done: int, total: int,
                  loss: float | None = None) -> str:
    """``epoch 3/15  step 12/50 (24%)  loss 0.5120``: where an epoch is, for logs."""
    line = f"epoch {epoch}/{epochs}  step {done}/{total} ({100 * done / max(total, 1):.0f}%)"
    return line if loss is None else f"{line}  loss {loss:.4f}"


class EpochProgress:
    """Progress within an epoch: a tqdm bar on a terminal, else a line every ``every_s``.

    Whole lines (the epoch lines, warnings) go through :meth:`write`, which keeps them
    above the bar instead of through it.
    """

    def __init__(self, stream: TextIO | None = None, *, is_tty: bool | None = None,
                 every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stdout
        self.is_tty = self.stream.isatty() if is_tty is None else is_tty
        self.every_s, self.clock = every_s, clock
        self.bar = None
        self.bar_epoch = None
        self.last_line_at = clock()

    def update(self, epoch: int, epochs: int, done: int, total: int,
               loss: float | None = None) -> None:
        if self.is_tty:
            from tqdm import tqdm

            if self.bar is None or self.bar_epoch != epoch:
                self.close()
                self.bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="step",
                                file=self.stream, leave=False, dynamic_ncols=True)
                self.bar_epoch = epoch
            self.bar.n = done
            if loss is not None:
                self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            self.bar.refresh()
            return
        now = self.clock()
        if done and now - self.last_line_at >= self.every_s:
            self.last_line_at = now
            self._print(progress_line(epoch, epochs, done, total, loss))

    def write(self, line: str) -> None:
        """A whole line: the epoch's bar ends, the line stays."""
        self.close()
        self.last_line_at = self.clock()
        self._print(line)

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = self.bar_epoch = None
