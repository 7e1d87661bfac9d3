"""What a run prints: epoch lines, progress, the settings that differ from the defaults."""

from __future__ import annotations

import io
import logging

import pytest

from pdml_ray.config import Config, ConfigError, resolve_paths
from pdml_ray.console import (EpochClock, EpochProgress, changed_settings, configure_logging,
                              epoch_line, format_duration, log_level, progress_line,
                              settings_summary, verbose)


def test_epoch_line_reads_like_the_issue_asks():
    line = epoch_line(7, 15, seconds_per_epoch=43.2, val_miou=0.18414, pixel_acc=0.35581,
                      best_miou=0.18414, best_epoch=7)
    assert line == "epoch 7/15  val mIoU 0.184 (best 0.184 @7)  pixel acc 0.356  43 s/epoch  ~6 min left"


def test_epoch_line_without_evaluation_shows_the_loss_and_the_last_no_time_left():
    assert (epoch_line(2, 15, seconds_per_epoch=43, loss=0.51234)
            == "epoch 2/15  loss 0.5123  43 s/epoch  ~9 min left")
    assert (epoch_line(15, 15, seconds_per_epoch=43, val_miou=0.2, pixel_acc=0.4,
                       best_miou=0.25, best_epoch=12)
            == "epoch 15/15  val mIoU 0.200 (best 0.250 @12)  pixel acc 0.400  43 s/epoch")


@pytest.mark.parametrize("seconds, shown", [(0.4, "0 s"), (43, "43 s"), (89, "89 s"),
                                            (90, "2 min"), (360, "6 min"),
                                            (5340, "89 min"), (7500, "2 h 05 min")])
def test_format_duration(seconds, shown):
    assert format_duration(seconds) == shown


def test_epoch_clock_keeps_the_best_epoch_and_averages_epoch_times():
    clock = EpochClock()
    assert clock.line(1, 4, 10.0, val_miou=0.10, pixel_acc=0.3) == (
        "epoch 1/4  val mIoU 0.100 (best 0.100 @1)  pixel acc 0.300  10 s/epoch  ~30 s left")
    assert clock.line(2, 4, 20.0, val_miou=0.30, pixel_acc=0.5) == (
        "epoch 2/4  val mIoU 0.300 (best 0.300 @2)  pixel acc 0.500  15 s/epoch  ~30 s left")
    assert clock.line(3, 4, 30.0, loss=0.25) == "epoch 3/4  loss 0.2500  20 s/epoch  ~20 s left"
    assert clock.line(4, 4, 20.0, val_miou=0.20, pixel_acc=0.4, prefix="trial a  ") == (
        "trial a  epoch 4/4  val mIoU 0.200 (best 0.300 @2)  pixel acc 0.400  20 s/epoch")
    assert (clock.best_miou, clock.best_epoch) == (0.30, 2)


def test_only_settings_that_differ_from_the_defaults_are_listed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    defaults = resolve_paths(Config(), tmp_path)
    cfg = resolve_paths(Config().replace(**{"train.epochs": 5, "loss.margin": 12.0,
                                            "ray.num_workers": 1, "train.batch_size": 4}),
                        tmp_path)
    # Paths anchored at the same project folder are no change; the order is the config's.
    assert changed_settings(cfg, defaults) == ["loss.margin=12.0", "train.epochs=5",
                                               "train.batch_size=4", "ray.num_workers=1"]
    assert settings_summary(cfg, defaults) == (
        "settings that differ from the defaults (4):\n"
        "  loss.margin=12.0  train.epochs=5  train.batch_size=4  ray.num_workers=1")
    assert settings_summary(defaults, defaults) == "settings: the defaults"
    swept = cfg.replace(**{"sweep.margins": [8.0, 20.0]})
    assert "sweep.margins=[8.0, 20.0]" not in changed_settings(swept, defaults)
    assert "sweep.margins=[8.0, 20.0]" in changed_settings(swept, defaults, include_sweep=True)


def test_long_summaries_wrap_without_splitting_a_setting(tmp_path):
    defaults = resolve_paths(Config(), tmp_path)
    cfg = defaults.replace(**{"data.root": str(tmp_path / ("long-folder-name-" * 6)),
                              "train.epochs": 5, "loss.margin": 12.0, "train.lr": 0.01})
    lines = settings_summary(cfg, defaults, width=60).splitlines()[1:]
    assert len(lines) > 1 and all(line.startswith("  ") for line in lines)
    assert " ".join(lines).split() == changed_settings(cfg, defaults)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_off_a_terminal_is_a_line_every_so_often():
    out, clock = io.StringIO(), FakeClock()
    progress = EpochProgress(out, is_tty=False, every_s=30.0, clock=clock)
    for second, done in ((10, 1), (29, 2), (31, 3), (50, 4), (62, 5)):
        clock.now = second
        progress.update(2, 15, done, 10, loss=0.5)
    assert out.getvalue().splitlines() == [progress_line(2, 15, 3, 10, 0.5),
                                           progress_line(2, 15, 5, 10, 0.5)]
    assert progress_line(2, 15, 3, 10, 0.5) == "epoch 2/15  step 3/10 (30%)  loss 0.5000"
    clock.now = 70
    progress.write("epoch 2/15  val mIoU 0.100")
    clock.now = 95  # the epoch line restarted the interval
    progress.update(3, 15, 1, 10)
    assert out.getvalue().splitlines()[-1] == "epoch 2/15  val mIoU 0.100"


def test_progress_on_a_terminal_is_a_bar_that_whole_lines_end():
    out = io.StringIO()
    progress = EpochProgress(out, is_tty=True)
    progress.update(1, 3, 2, 8, loss=0.75)
    assert progress.bar is not None and progress.bar.n == 2
    assert "epoch 1/3" in out.getvalue() and "2/8" in out.getvalue()
    assert "loss 0.7500" in out.getvalue()
    progress.write("epoch 1/3  val mIoU 0.100")
    assert progress.bar is None and out.getvalue().endswith("epoch 1/3  val mIoU 0.100\n")
    progress.update(2, 3, 1, 8)
    assert progress.bar.desc.startswith("epoch 2/3")
    progress.close()


def test_log_level_and_verbosity_come_from_pdml_log_level(monkeypatch):
    monkeypatch.delenv("PDML_LOG_LEVEL", raising=False)
    assert log_level() == logging.WARNING and not verbose()
    monkeypatch.setenv("PDML_LOG_LEVEL", "debug")
    assert log_level() == logging.DEBUG and verbose()
    monkeypatch.setenv("PDML_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match="PDML_LOG_LEVEL"):
        log_level()


def test_quiet_console_hides_library_info_and_keeps_our_lines_and_warnings(monkeypatch, capsys):
    monkeypatch.delenv("PDML_LOG_LEVEL", raising=False)
    saved = {name: logging.getLogger(name).level for name in ("ray", "mlflow", "pdml_ray")}
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    try:
        configure_logging()
        logging.getLogger("ray.train").info("Reporting training result 1: TrainingReport(...)")
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables")
        logging.getLogger("pdml_ray.service.train.driver").info("MLflow run   abc in sqlite:///x")
        logging.getLogger("pdml_ray.service.tracking").warning("MLflow unreachable")
        err = capsys.readouterr().err
        assert "Reporting training result" not in err and "database tables" not in err
        # Ray's warnings pass (printed by Ray's own handler once Ray is imported).
        assert logging.getLogger("ray.train").isEnabledFor(logging.WARNING)
        assert not logging.getLogger("ray.train").isEnabledFor(logging.INFO)
        ours = [line for line in err.splitlines() if "MLflow" in line]
        assert ours == ["MLflow run   abc in sqlite:///x", "warning: MLflow unreachable"]
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
