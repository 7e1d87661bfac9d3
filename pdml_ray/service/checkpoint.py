"""Training checkpoints: one ``checkpoint.pt`` of tensors and plain values, plus the config.

Everything in the file loads with ``torch.load(..., weights_only=True)``: no pickled
code is ever executed when a checkpoint is read.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing or holds more than tensors and plain values."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP, if any."""
    return getattr(model, "module", model)


def save_training_state(folder: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None, step: int, epoch: int,
                        config: dict, metrics: dict) -> None:
    folder = Path(folder)
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step,
        "epoch": epoch,  # the next epoch to run
        "config": config,
        "metrics": metrics,
    }
    torch.save(state, folder / CHECKPOINT_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def load_training_state(folder: str | Path, map_location: Any = "cpu") -> dict:
    """The state written by :func:`save_training_state`.

    Raises CheckpointError, and runs nothing, when the file holds pickled Python objects
    (a class, a function call) that ``weights_only=True`` does not allow: such a file
    was not written by pdml_ray and may be built to run code when unpickled.
    """
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a pdml_ray checkpoint (no {CHECKPOINT_FILE})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is several paragraphs that end in how to allow the object;
        # the user needs only which object it was.
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        culprit = f" (found: {found.group(1)})" if found else ""
        raise CheckpointError(f"{path}: refused to load: it holds Python objects beyond "
                              f"tensors and plain values{culprit}, which could run code when "
                              "unpickled; only load checkpoints written by pdml_ray") from None
