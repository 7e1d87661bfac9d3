"""Pruning an interrupted run's checkpoints to ray.keep_checkpoints, and any other run's
unregistered folders: which folders go (a pure function of the folder listing and the
metrics Ray recorded), and that Ray's snapshot still describes the folders that stay.
No Ray cluster."""

from __future__ import annotations

import json

import pytest

from pdml_ray.service.train.checkpoint import (RAY_SNAPSHOT_FILE, checkpoints_to_delete,
                                         prune_checkpoints, recorded_metrics, snapshot_without)


def name(step: int) -> str:
    return f"checkpoint_2026-01-01_00-00-{step:02d}.000000"


def metrics(step: int, miou: float) -> dict:
    return {"val_miou": miou, "val_pixel_acc": 0.5, "epoch": step // 4, "step": step}


def snapshot(scores: dict[int, float], latest: int, pending: tuple[int, ...] = ()) -> dict:
    """Ray 2.60's checkpoint_manager_snapshot.json for checkpoints ``{step: val_miou}``."""
    def state(step):
        return {"version": 0, "checkpoint_dir_name": name(step), "metrics": metrics(step, scores[step])}

    ordered = sorted(scores, key=lambda step: (scores[step], step))  # Ray keeps them by score
    return {"ray_version": "2.60.0",
            "checkpoint_results": [state(step) for step in ordered],
            "checkpoint_report_indices": [step // 4 - 1 for step in ordered],
            "latest_checkpoint_result": state(latest),
            "pending_training_results": [state(step) for step in pending],
            "pending_validation_specs": [False for _ in pending],
            "current_report_index": latest // 4,
            "validated_checkpoint_dir_names": [],
            "timed_out_validation_checkpoint_dir_names": [],
            "failed_validation_checkpoint_dir_names": []}


def test_the_newest_and_then_the_best_are_kept():
    recorded = {name(4): metrics(4, 0.30), name(8): metrics(8, 0.50), name(12): metrics(12, 0.20)}
    folders = list(recorded)
    # Ray's own rule left all three: the best two plus the latest.
    assert checkpoints_to_delete(folders, recorded, keep=2) == [name(4)]
    assert checkpoints_to_delete(folders, recorded, keep=1) == [name(4), name(8)]
    assert checkpoints_to_delete(folders, recorded, keep=3) == []
    assert checkpoints_to_delete(folders, recorded, keep=5) == []


def test_the_newest_is_found_by_its_step_not_by_its_folder_name():
    recorded = {"checkpoint_b": metrics(4, 0.9), "checkpoint_a": metrics(8, 0.1),
                "checkpoint_c": metrics(6, 0.5)}
    assert checkpoints_to_delete(recorded, recorded, keep=1) == ["checkpoint_b", "checkpoint_c"]
    assert checkpoints_to_delete(recorded, recorded, keep=2) == ["checkpoint_c"]


def test_ties_in_val_miou_keep_the_newer_checkpoint():
    recorded = {name(4): metrics(4, 0.4), name(8): metrics(8, 0.4), name(12): metrics(12, 0.1)}
    assert checkpoints_to_delete(recorded, recorded, keep=2) == [name(4)]


def test_unregistered_and_unrecorded_folders_always_go():
    # checkpoint 16 was written by rank 0 but not registered when the run stopped; Ray
    # resumes from its snapshot's latest (12) and would never delete 16 itself.
    recorded = {name(8): metrics(8, 0.5), name(12): metrics(12, 0.2)}
    folders = [name(8), name(12), name(16)]
    assert checkpoints_to_delete(folders, recorded, keep=2) == [name(16)]
    assert checkpoints_to_delete(folders, recorded, keep=1) == [name(8), name(16)]
    assert checkpoints_to_delete([name(4)], {}, keep=2) == [name(4)]  # no snapshot at all
    # A recorded checkpoint whose folder is gone is no reason to delete another.
    assert checkpoints_to_delete([name(12)], recorded, keep=1) == []


def test_without_keep_only_unregistered_folders_go():
    # After a run that was not interrupted Ray's own choice of checkpoints stands; a
    # folder it never registered (a worker killed during an asynchronous copy) goes.
    recorded = {name(4): metrics(4, 0.3), name(8): metrics(8, 0.5), name(12): metrics(12, 0.2)}
    assert checkpoints_to_delete(recorded, recorded, keep=None) == []
    assert checkpoints_to_delete([*recorded, name(10), name(16)], recorded, keep=None) == [
        name(10), name(16)]
    assert checkpoints_to_delete([name(4)], {}, keep=None) == [name(4)]


def test_nan_scores_rank_last():
    recorded = {name(4): metrics(4, float("nan")), name(8): metrics(8, 0.1),
                name(12): metrics(12, 0.05)}
    assert checkpoints_to_delete(recorded, recorded, keep=2) == [name(4)]


def test_keep_must_be_positive():
    with pytest.raises(ValueError, match="keep must be >= 1, got 0"):
        checkpoints_to_delete([], {}, keep=0)


def test_snapshot_without_drops_the_deleted_checkpoints_from_every_list():
    before = snapshot({4: 0.3, 8: 0.5, 12: 0.2}, latest=12)
    after = snapshot_without(before, {name(4)})
    assert [entry["checkpoint_dir_name"] for entry in after["checkpoint_results"]] == [
        name(12), name(8)]
    assert after["checkpoint_report_indices"] == [2, 1]  # each kept with its own index
    assert after["latest_checkpoint_result"] == before["latest_checkpoint_result"]
    assert recorded_metrics(after) == {name(12): metrics(12, 0.2), name(8): metrics(8, 0.5)}
    with pytest.raises(ValueError, match="the latest checkpoint .* must be kept"):
        snapshot_without(before, {name(12)})


def test_prune_checkpoints_leaves_what_ray_can_resume_from(tmp_path):
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (
        _CheckpointManagerState)

    run = tmp_path / "ray_results" / "run-1"
    for step in (4, 8, 12, 16):
        (run / name(step)).mkdir(parents=True)
        (run / name(step) / "checkpoint.pt").write_bytes(b"weights")
    (run / RAY_SNAPSHOT_FILE).write_text(json.dumps(snapshot({4: 0.3, 8: 0.5, 12: 0.2},
                                                             latest=12)))
    (run / "other_file.json").write_text("{}")

    removed = prune_checkpoints(str(tmp_path / "ray_results"), "run-1", keep=2)
    assert removed == [name(4), name(16)]
    assert sorted(path.name for path in run.iterdir()) == sorted(
        [name(8), name(12), RAY_SNAPSHOT_FILE, "other_file.json"])
    written = json.loads((run / RAY_SNAPSHOT_FILE).read_text())
    state = _CheckpointManagerState.model_validate(written)  # as Ray reads it on resume
    assert {result.checkpoint_dir_name for result in state.checkpoint_results} == {
        name(8), name(12)}  # every checkpoint it names exists
    assert state.latest_checkpoint_result.checkpoint_dir_name == name(12)
    assert prune_checkpoints(str(tmp_path / "ray_results"), "run-1", keep=2) == []
    assert prune_checkpoints(str(tmp_path / "ray_results"), "never-ran", keep=2) == []


def test_prune_keeps_every_checkpoint_when_ray_left_no_snapshot(tmp_path):
    # Without Ray's record nothing says which folder is the resume point: keep them all.
    run = tmp_path / "ray_results" / "run-2"
    for step in (4, 8, 12):
        (run / name(step)).mkdir(parents=True)
    assert prune_checkpoints(str(tmp_path / "ray_results"), "run-2", keep=1) == []
    assert sorted(path.name for path in run.iterdir()) == [name(4), name(8), name(12)]


def test_prune_without_keep_removes_only_the_unregistered_folder(tmp_path):
    run = tmp_path / "ray_results" / "run-3"
    for step in (4, 8, 12, 16):
        (run / name(step)).mkdir(parents=True)
    (run / name(16) / "checkpoint.pt").write_bytes(b"a partial cop")  # never registered
    recorded = snapshot({4: 0.3, 8: 0.5, 12: 0.2}, latest=12)
    (run / RAY_SNAPSHOT_FILE).write_text(json.dumps(recorded))

    assert prune_checkpoints(str(tmp_path / "ray_results"), "run-3", keep=None) == [name(16)]
    assert sorted(path.name for path in run.iterdir()) == sorted(
        [name(4), name(8), name(12), RAY_SNAPSHOT_FILE])
    assert json.loads((run / RAY_SNAPSHOT_FILE).read_text()) == recorded  # it named all three
    assert prune_checkpoints(str(tmp_path / "ray_results"), "run-3", keep=None) == []
