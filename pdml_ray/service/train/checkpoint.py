"""Training checkpoints: one ``checkpoint.pt`` of tensors and plain values, plus the config.

Everything in the file loads with ``torch.load(..., weights_only=True)``: no pickled
code is ever executed when a checkpoint is read.

A run's checkpoints are folders ``<storage_path>/<run name>/checkpoint_<time>`` beside
Ray Train's record of the ones it registered (``checkpoint_manager_snapshot.json``, with
the metrics each was reported with). :func:`prune_checkpoints` trims them to
``ray.keep_checkpoints`` after an interrupted run, which Ray leaves with one more (it
keeps the latest besides the best) and with any checkpoint written but not yet registered;
after any other run it removes only the folders Ray never registered (a worker killed
while its checkpoint was being copied leaves a partial one that nothing reads or deletes).
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

import torch
from torch import nn

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
# Ray Train's record of a run's registered checkpoints, read when the run resumes: every
# checkpoint it lists must exist (Ray 2.60, train/v2 CheckpointManager).
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
CHECKPOINT_PREFIX = "checkpoint_"


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


# -- pruning an interrupted run's checkpoints ------------------------------------------
def checkpoints_to_delete(folders: Iterable[str], recorded: Mapping[str, Mapping[str, Any]],
                          keep: int | None) -> list[str]:
    """The checkpoint folders to remove so that at most ``keep`` remain: the newest
    (highest ``step``: a resume starts there) and, after it, the best by ``val_miou``
    (ties: the newer), the checkpoints ``CheckpointConfig(num_to_keep=keep,
    checkpoint_score_attribute="val_miou")`` asks for (Ray itself holds the latest on top
    of the best ``keep``). Folders with no recorded metrics (written but never registered,
    or no longer registered) go: a resume cannot start from them and Ray would never
    delete them.

    Args:
        folders: names of the ``checkpoint_*`` folders in the run's storage folder.
        recorded: the metrics (``step``, ``val_miou``) each registered checkpoint was
            reported with, by folder name (:func:`recorded_metrics`).
        keep: ``ray.keep_checkpoints``, at least 1; None keeps every registered
            checkpoint (only the unregistered folders go).
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    folders = sorted(set(folders))
    if keep is None:
        return [name for name in folders if name not in recorded]
    usable = [name for name in folders if name in recorded]

    def step(name: str) -> int:
        return int(recorded[name].get("step", -1))

    def score(name: str) -> float:
        value = recorded[name].get("val_miou")
        return -math.inf if value is None or math.isnan(float(value)) else float(value)

    kept: set[str] = set()
    if usable:
        newest = max(usable, key=lambda name: (step(name), name))
        best = sorted((name for name in usable if name != newest),
                      key=lambda name: (score(name), step(name), name), reverse=True)
        kept = {newest, *best[:keep - 1]}
    return [name for name in folders if name not in kept]


def recorded_metrics(snapshot: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{folder name: metrics}`` of the checkpoints in Ray Train's snapshot."""
    return {entry["checkpoint_dir_name"]: dict(entry.get("metrics") or {})
            for entry in snapshot.get("checkpoint_results", [])}


def snapshot_without(snapshot: Mapping[str, Any], deleted: Collection[str]) -> dict[str, Any]:
    """Ray Train's snapshot with the ``deleted`` checkpoints left out of every list that
    names one, so that a resume does not look for them. The latest checkpoint is never
    among them (:func:`checkpoints_to_delete` keeps the newest)."""
    def gone(entry: Mapping[str, Any]) -> bool:
        return entry["checkpoint_dir_name"] in deleted

    latest = snapshot.get("latest_checkpoint_result")
    if latest is not None and gone(latest):
        raise ValueError(f"the latest checkpoint {latest['checkpoint_dir_name']} must be kept")
    results, indices = snapshot.get("checkpoint_results", []), snapshot.get(
        "checkpoint_report_indices", [])
    pairs = [(entry, index) for entry, index in zip(results, indices) if not gone(entry)]
    pending = [(entry, spec) for entry, spec in zip(snapshot.get("pending_training_results", []),
                                                    snapshot.get("pending_validation_specs", []))
               if not gone(entry)]
    out = dict(snapshot)
    out["checkpoint_results"] = [entry for entry, _ in pairs]
    out["checkpoint_report_indices"] = [index for _, index in pairs]
    out["pending_training_results"] = [entry for entry, _ in pending]
    out["pending_validation_specs"] = [spec for _, spec in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        if key in snapshot:
            out[key] = [name for name in snapshot[key] if name not in deleted]
    return out


def prune_checkpoints(storage_path: str, run_name: str, keep: int | None) -> list[str]:
    """Remove the checkpoints of ``<storage_path>/<run_name>`` that
    :func:`checkpoints_to_delete` names (a local folder or a pyarrow URI such as
    ``s3://bucket/x``), after writing Ray's snapshot without them; returns their names.
    Call it only when no worker of the run is alive: a folder still being written is
    not registered yet."""
    import pyarrow.fs as pafs

    if "://" in storage_path:
        fs, base = pafs.FileSystem.from_uri(storage_path)
    else:
        fs, base = pafs.LocalFileSystem(), str(Path(storage_path).resolve())
    run = f"{base.rstrip('/')}/{run_name}"
    entries = fs.get_file_info(pafs.FileSelector(run, allow_not_found=True))
    folders = [entry.base_name for entry in entries if entry.type == pafs.FileType.Directory
               and entry.base_name.startswith(CHECKPOINT_PREFIX)]
    snapshot_path = f"{run}/{RAY_SNAPSHOT_FILE}"
    snapshot = None
    if fs.get_file_info(snapshot_path).type == pafs.FileType.File:
        with fs.open_input_stream(snapshot_path) as stream:
            snapshot = json.loads(stream.read())
    if snapshot is None:
        # No record of which checkpoints Ray registered (none yet, or a Ray that keeps it
        # elsewhere): deleting on a guess could remove the resume point, so keep them all.
        return []
    deleted = checkpoints_to_delete(folders, recorded_metrics(snapshot), keep)
    if not deleted:
        return []
    # Written first (to a temporary name, then moved), as Ray does: a snapshot must
    # never name a checkpoint that is already gone.
    with fs.open_output_stream(f"{snapshot_path}.tmp") as stream:
        stream.write(json.dumps(snapshot_without(snapshot, set(deleted))).encode())
    fs.move(f"{snapshot_path}.tmp", snapshot_path)
    for name in deleted:
        fs.delete_dir(f"{run}/{name}")
    return deleted
