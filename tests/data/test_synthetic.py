from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdml_ray.config import DataConfig
from pdml_ray.data import (DataError, SyntheticDataset, build_dataset, dataset_class,
                           ensure_synthetic, generate_points, generate_scenes, read_points,
                           write_points)
from pdml_ray.data import factory
from pdml_ray.data.io import atomic_directory
from pdml_ray.data.synthetic import STUFF_CLASSES, THING_CLASSES

IGNORE = 255
REPO = Path(__file__).resolve().parents[2]


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_scenes(tmp_path, synthetic_root):
    generate_scenes(tmp_path / "again", train=6, val=3, size=32, seed=0)
    assert all_files(tmp_path / "again") == all_files(synthetic_root)
    generate_scenes(tmp_path / "other", train=6, val=3, size=32, seed=1)
    other = all_files(tmp_path / "other")
    images = [k for k in other if k.endswith(".jpg")]
    assert len(images) == 9 and all(other[k] != all_files(synthetic_root)[k] for k in images)


def test_layout_and_classes_json(synthetic_root):
    info = json.loads((synthetic_root / "classes.json").read_text())
    assert tuple(info["classes"]) == SyntheticDataset.classes
    assert len(info["palette"]) == SyntheticDataset.num_classes >= 8
    assert info["generation"] == {"train": 6, "val": 3, "size": 32, "seed": 0, "version": 1}
    assert len(STUFF_CLASSES) >= 4 and len(THING_CLASSES) >= 4
    for kind in ("images", "annotations", "instances"):
        assert len(list((synthetic_root / kind / "training").iterdir())) == 6
        assert len(list((synthetic_root / kind / "validation").iterdir())) == 3
    assert dataset_class("synthetic") is SyntheticDataset


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A larger sample for statistics: 30 train + 10 val scenes at 64x64."""
    root = tmp_path_factory.mktemp("stats") / "scenes"
    generate_scenes(root, train=30, val=10, size=64, seed=3)
    return SyntheticDataset(root, "train"), SyntheticDataset(root, "val")


def test_every_class_appears_and_instances_are_whole_single_class_regions(scenes):
    train, _ = scenes
    seen = set()
    thing_extents = []
    for index in range(len(train)):
        mask, instances = train.load_mask(index), train.load_instances(index)
        assert mask.shape == instances.shape == (64, 64) and (mask != IGNORE).all()
        seen |= set(np.unique(mask).tolist())
        ids = np.unique(instances)
        assert ids.tolist() == list(range(1, ids.max() + 1))  # consecutive, no pixel without
        for i in ids:
            classes = np.unique(mask[instances == i])
            assert len(classes) == 1
            if classes[0] >= len(STUFF_CLASSES):
                ys, xs = np.nonzero(instances == i)
                thing_extents.append(max(np.ptp(ys), np.ptp(xs)) + 1)
        points = generate_points(mask, instances)
        assert len(points) == ids.max()
    assert seen == set(range(train.num_classes))
    # Things are not tiny: most span at least 12% of the image side.
    assert np.mean(np.asarray(thing_extents) >= 0.12 * 64) > 0.9


def test_colour_alone_does_not_determine_the_class(scenes):
    """A nearest-class-mean colour classifier, fitted on train pixels, stays far from perfect."""
    train, val = scenes

    def pixels(data):
        images = np.concatenate([data.load_image(i).reshape(-1, 3) for i in range(len(data))])
        labels = np.concatenate([data.load_mask(i).ravel() for i in range(len(data))])
        return images.astype(np.float64), labels

    x_train, y_train = pixels(train)
    means = np.stack([x_train[y_train == c].mean(axis=0) for c in range(train.num_classes)])
    x_val, y_val = pixels(val)
    predicted = np.argmin(((x_val[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
    accuracy = (predicted == y_val).mean()
    assert accuracy < 0.5, f"colour predicts the class too well: {accuracy:.2f}"


def test_dataset_items(synthetic_root):
    data = SyntheticDataset(synthetic_root, "val")
    item = data[1]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    assert item["image_index"].item() == 1
    assert data.image_ids == ["synthetic_val_00000", "synthetic_val_00001", "synthetic_val_00002"]


def test_classes_json_is_checked(tmp_path, synthetic_root):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    info = json.loads((root / "classes.json").read_text())
    info["classes"][0] = "cloud"
    (root / "classes.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="other classes"):
        SyntheticDataset(root, "train")
    (root / "classes.json").unlink()
    with pytest.raises(DataError, match="classes.json not found"):
        SyntheticDataset(root, "train")


def test_missing_instance_map_is_reported(tmp_path, synthetic_root):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    (root / "instances" / "training" / "synthetic_train_00001.png").unlink()
    with pytest.raises(DataError, match="instance map of image synthetic_train_00001.jpg"):
        SyntheticDataset(root, "train")


def test_generate_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        generate_scenes(tmp_path / "out", train=1, val=1, size=16, seed=0)
    assert os.listdir(tmp_path / "out") == ["keep.txt"]


# -- config entry points ------------------------------------------------------------------
def small_config(root: Path, **overrides) -> DataConfig:
    settings = dict(dataset="synthetic", root=str(root), crop_size=24, synthetic_train=4,
                    synthetic_val=2, synthetic_size=32, synthetic_seed=0)
    return DataConfig(**{**settings, **overrides})


def test_ensure_synthetic_generates_once_with_points(tmp_path):
    cfg = small_config(tmp_path / "syn")
    root = ensure_synthetic(cfg)
    points_file = root / "points_train.parquet"
    table = read_points(points_file)
    assert table.metadata["dataset"] == "synthetic"
    assert table.metadata["generation"]["instances"] == "instance maps"
    assert len(table.image_ids) == 4
    stamp = (root / "classes.json").stat().st_mtime_ns, points_file.stat().st_mtime_ns
    ensure_synthetic(cfg)
    assert ((root / "classes.json").stat().st_mtime_ns, points_file.stat().st_mtime_ns) == stamp
    assert sorted(os.listdir(tmp_path)) == ["syn"]  # no temporary folders left


def test_generated_scenes_are_readable_by_others_under_umask_022(tmp_path):
    """The folder is renamed from a temporary one (mkdtemp: 0700) and the points file from
    a temporary file (mkstemp: 0600); both get what mkdir and open would give them."""
    before = os.umask(0o022)
    try:
        root = ensure_synthetic(small_config(tmp_path / "syn"))
    finally:
        os.umask(before)
    modes = {path.relative_to(tmp_path).as_posix(): path.stat().st_mode & 0o777
             for path in (root, root / "points_train.parquet", root / "classes.json")}
    assert modes == {"syn": 0o755, "syn/points_train.parquet": 0o644, "syn/classes.json": 0o644}


def test_ensure_synthetic_points_elsewhere_and_settings_mismatch(tmp_path):
    elsewhere = tmp_path / "pts" / "p.parquet"
    ensure_synthetic(small_config(tmp_path / "syn", points_file=str(elsewhere)))
    assert elsewhere.is_file()
    assert not (tmp_path / "syn" / "points_train.parquet").exists()
    with pytest.warns(UserWarning, match="using scenes generated with"):
        ensure_synthetic(small_config(tmp_path / "syn", synthetic_train=5))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("")
    with pytest.raises(DataError, match="holds files but no generated scenes"):
        ensure_synthetic(small_config(tmp_path / "full"))


def test_ensure_synthetic_uses_the_winner_of_a_race(tmp_path, monkeypatch):
    """Another process finishes first while we generate: our rename fails, theirs is used."""
    cfg = small_config(tmp_path / "syn")
    real_write = factory.write_scenes

    def write_while_another_process_wins(out_dir, **kwargs):
        with atomic_directory(tmp_path / "syn") as theirs:
            real_write(theirs, **kwargs)
            (theirs / "points_train.parquet").write_bytes(b"theirs")
        return real_write(out_dir, **kwargs)

    monkeypatch.setattr(factory, "write_scenes", write_while_another_process_wins)
    ensure_synthetic(cfg)
    assert (tmp_path / "syn" / "points_train.parquet").read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == ["syn"]


def test_concurrent_processes_share_one_dataset(tmp_path):
    code = ("import sys\n"
            "from pdml_ray.config import DataConfig\n"
            "from pdml_ray.data import ensure_synthetic\n"
            "ensure_synthetic(DataConfig(root=sys.argv[1], synthetic_train=40, synthetic_val=2,"
            " synthetic_size=48))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "syn")], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert sorted(os.listdir(tmp_path)) == ["syn"]
    assert len(SyntheticDataset(tmp_path / "syn", "train")) == 40
    assert len(read_points(tmp_path / "syn" / "points_train.parquet").image_ids) == 40


def test_build_dataset_train_and_val(tmp_path):
    cfg = small_config(tmp_path / "syn", max_val_images=1)
    torch.manual_seed(0)
    train = build_dataset(cfg, "train")
    item = train[0]
    assert item["image"].shape == (3, 24, 24) and item["point_labels"].shape == (24, 24)
    assert item["mask"].shape == (24, 24)
    val = build_dataset(cfg, "val")
    assert len(val) == 1 and val[0]["image"].shape == (3, 32, 32)
    untransformed = build_dataset(cfg, "train", train_transform=False)
    table = read_points(tmp_path / "syn" / "points_train.parquet")
    for index, image_id in enumerate(untransformed.image_ids):
        item = untransformed[index]
        assert item["image"].shape == (3, 32, 32)
        assert (item["point_labels"] != IGNORE).sum() == len(table.for_image(image_id))


def test_build_dataset_needs_a_points_file_for_real_datasets(tmp_path, ade20k_root):
    cfg = DataConfig(dataset="ade20k", root=str(ade20k_root), crop_size=16)
    with pytest.raises(DataError, match="jobs.prepare_points"):
        build_dataset(cfg, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_dataset(cfg, "train", points=_one_point_table(ade20k_root, tmp_path))
    assert data[0]["image"].shape == (3, 16, 16)


def _one_point_table(root: Path, tmp_path: Path) -> Path:
    stem = sorted((root / "images" / "training").glob("*.jpg"))[0].stem
    with Image.open(root / "annotations" / "training" / f"{stem}.png") as png:
        label = np.asarray(png)
    ys, xs = np.nonzero(label > 0)
    write_points(tmp_path / "one.parquet", {stem: [[ys[0], xs[0], label[ys[0], xs[0]] - 1]]})
    return tmp_path / "one.parquet"
