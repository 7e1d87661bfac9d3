"""The driver's console: worker events rendered as lines; a sweep's per-trial lines."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

from pdml_ray.console import EpochClock, EpochProgress
from pdml_ray.service.train.progress import TrialLines, render

def test_worker_events_become_epoch_progress_and_warning_lines():
    out = io.StringIO()
    progress = EpochProgress(out, is_tty=False, every_s=0.0)
    render([{"kind": "progress", "epoch": 1, "epochs": 2, "done": 3, "total": 4, "loss": 0.5},
            {"kind": "epoch", "epoch": 1, "epochs": 2, "seconds": 12.0, "loss": 0.4,
             "val_miou": None, "pixel_acc": None},
            {"kind": "warning", "level": logging.WARNING, "message": "rank 1: store restarted"},
            {"kind": "epoch", "epoch": 2, "epochs": 2, "seconds": 14.0, "loss": 0.3,
             "val_miou": 0.25, "pixel_acc": 0.5},
            {"kind": "warning", "level": logging.ERROR, "message": "rank 0: bad file"}],
           progress, EpochClock())
    assert out.getvalue().splitlines() == [
        "epoch 1/2  step 3/4 (75%)  loss 0.5000",
        "epoch 1/2  loss 0.4000  12 s/epoch  ~12 s left",
        "warning: rank 1: store restarted",
        "epoch 2/2  val mIoU 0.250 (best 0.250 @2)  pixel acc 0.500  13 s/epoch",
        "error: rank 0: bad file"]


def test_sweep_trials_print_epoch_lines_in_the_same_style():
    lines = []
    callback = TrialLines(epochs=3, print_line=lambda line, flush=False: lines.append(line))
    trial = SimpleNamespace(trial_id="ab12_00001", local_path="/r/ab12_00001",
                            config={"loss.margin": 8.0, "extension.threshold": 0.5})
    callback.on_trial_result(1, [], trial, {"training_iteration": 1, "time_this_iter_s": 0.5})
    callback.on_trial_result(1, [], trial, {"val_miou": 0.1, "val_pixel_acc": 0.3, "epoch": 1,
                                            "training_iteration": 1, "time_this_iter_s": 20.0})
    callback.on_trial_result(2, [], trial, {"val_miou": 0.08, "val_pixel_acc": 0.31, "epoch": 2,
                                            "training_iteration": 2, "time_this_iter_s": 10.0})
    callback.on_trial_complete(3, [], trial)
    other = SimpleNamespace(trial_id="ab12_00002", local_path="/r/ab12_00002", config={})
    callback.on_trial_error(3, [], other)
    assert lines == [
        "trial ab12_00001 (margin 8, threshold 0.5)  epoch 1/3  val mIoU 0.100 (best 0.100 @1)"
        "  pixel acc 0.300  20 s/epoch  ~40 s left",
        "trial ab12_00001 (margin 8, threshold 0.5)  epoch 2/3  val mIoU 0.080 (best 0.100 @1)"
        "  pixel acc 0.310  15 s/epoch  ~15 s left",
        "trial ab12_00001 (margin 8, threshold 0.5)  ended: best val mIoU 0.100 @1 after "
        "2 evaluation(s), 30 s",
        "error: trial ab12_00002 failed; its error is in /r/ab12_00002"]
