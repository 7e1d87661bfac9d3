"""The data jobs, run as a user runs them: ``python -m jobs.X`` from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pdml_ray.data import (ADE20KDataset, DataError, SyntheticDataset, describe_points,
                           prepare_points, read_points)
from pdml_ray.labelling.tool_import import import_points

REPO = Path(__file__).resolve().parents[2]


def run_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs") / "scenes"
    result = run_job("jobs.make_synthetic", "--out", str(out), "--train", "5", "--val", "2",
                     "--size", "32", "--seed", "1")
    return out, result


def test_make_synthetic_writes_scenes_and_prints_statistics(made):
    out, result = made
    assert result.returncode == 0, result.stderr
    assert "images: train 5, val 2" in result.stdout
    assert "instances per image (train): mean" in result.stdout
    assert "class pixel shares" in result.stdout and "kite" in result.stdout
    assert len(SyntheticDataset(out, "train")) == 5


def test_prepare_points_generates_from_instance_maps(made, tmp_path):
    out, _ = made
    points_file = tmp_path / "points.parquet"
    result = run_job("jobs.prepare_points", "--dataset", "synthetic", "--root", str(out),
                     "--split", "train", "--out", str(points_file), "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "points per image: mean" in result.stdout
    assert "12.26 on PASCAL-Context" in result.stdout and "13.96 on ADE20K" in result.stdout
    assert "points per class" in result.stdout and "crate" in result.stdout
    assert "100%" in result.stderr  # the tqdm bar
    table = read_points(points_file)
    assert table.metadata["generation"] == {"strategy": "random", "seed": 3,
                                            "instances": "instance maps"}
    data = SyntheticDataset(out, "train")
    for index, image_id in enumerate(data.image_ids):
        assert len(table.for_image(image_id)) == data.load_instances(index).max()


def test_imported_duplicates_are_counted_in_the_points_file(made, tmp_path):
    """What jobs.prepare_points says it dropped is in the file too (``generation``
    metadata), and the file is readable by others under umask 022 like any file open()
    writes, not owner-only like the temporary file it was written to first."""
    out, _ = made
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("image_id,y,x,class_id\n" + "synthetic_train_00000,3,4,1\n" * 2
                      + "synthetic_train_00001,5,6,2\n" * 3 + "synthetic_train_00002,7,8,3\n")
    points_file = tmp_path / "points_train.parquet"
    before = os.umask(0o022)  # inherited by the job
    try:
        result = run_job("jobs.prepare_points", "--dataset", "synthetic", "--root", str(out),
                         "--out", str(points_file), "--import", str(clicks))
    finally:
        os.umask(before)
    assert result.returncode == 0, result.stderr
    assert "3 exact duplicate point(s) dropped" in result.stdout
    table = read_points(points_file)
    assert table.metadata["generation"] == {"imported_from": "clicks.csv",
                                            "duplicates_dropped": 3}
    assert table.num_points == 3
    assert points_file.stat().st_mode & 0o777 == 0o644


def test_prepare_points_imports_and_rejects_points_outside_images(made, tmp_path):
    out, _ = made
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("image_id,y,x,class_id\n"
                      "synthetic_train_00000,3,4,1\nsynthetic_train_00002,31,0,7\n")
    result = run_job("jobs.prepare_points", "--dataset", "synthetic", "--root", str(out),
                     "--out", str(tmp_path / "imported.parquet"), "--import", str(clicks))
    assert result.returncode == 0, result.stderr
    table = read_points(tmp_path / "imported.parquet")
    assert table.points_per_image == {"synthetic_train_00000": 1, "synthetic_train_00002": 1}
    assert table.metadata["generation"] == {"imported_from": "clicks.csv"}

    clicks.write_text("image_id,y,x,class_id\nsynthetic_train_00000,3,32,1\n")
    result = run_job("jobs.prepare_points", "--dataset", "synthetic", "--root", str(out),
                     "--out", str(tmp_path / "bad.parquet"), "--import", str(clicks))
    assert result.returncode == 2
    assert f"{clicks}: image synthetic_train_00000: point (y=3, x=32)" in result.stderr
    assert not (tmp_path / "bad.parquet").exists()


def test_prepare_points_on_ade20k_uses_connected_components(ade20k_root, tmp_path):
    table, data = prepare_points("ade20k", ade20k_root, "train", tmp_path / "p.parquet",
                                 strategy="center", progress=False)
    assert isinstance(data, ADE20KDataset)
    assert table.metadata["generation"]["instances"] == "8-connected components"
    for index, image_id in enumerate(data.image_ids):
        mask = data.load_mask(index)
        components = sum(ndimage.label(mask == c, structure=np.ones((3, 3)))[1]
                         for c in np.unique(mask[mask != 255]))
        ys, xs, classes = table.for_image(image_id).T
        assert len(classes) == components
        np.testing.assert_array_equal(mask[ys, xs], classes)
    assert "points per image: mean" in describe_points(table, data)


def test_prepare_points_import_of_unknown_images(ade20k_root, tmp_path):
    clicks = tmp_path / "clicks.json"
    clicks.write_text('{"ADE_train_00000001": [{"y": 1, "x": 1, "cls": 3}], "nope": []}')
    import_points("ade20k", ade20k_root, "train", tmp_path / "ok.parquet", [clicks])
    clicks.write_text('{"not_an_image": [{"y": 1, "x": 1, "cls": 3}]}')
    with pytest.raises(DataError, match="not_an_image"):
        import_points("ade20k", ade20k_root, "train", tmp_path / "bad.parquet", [clicks])
