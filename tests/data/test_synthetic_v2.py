"""Scene generator version 2, the held-out test split, and augmentation drawn per sample."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from pdml_ray.config import Config
from pdml_ray.data import build_dataset, generate_scenes
from pdml_ray.data import synthetic, synthetic_v2
from pdml_ray.data.synthetic import SyntheticDataset, SyntheticV2Dataset


def scenes_digest(render, count: int = 3, size: int = 64) -> str:
    digest = hashlib.sha256()
    for index in range(count):
        for array in render(np.random.default_rng([0, 0, index]), size):
            digest.update(array.tobytes())
    return digest.hexdigest()


# What each version draws, pinned: a change to a generator that moves a single pixel of
# these scenes must come as a new version, or the figures made on the old one no longer
# reproduce. (Version 1's digest is the one the code had before version 2 existed.)
PINNED = {
    1: "10e99df5d7b7ae4f8f22470892b1df4424fd66138cb44facd88915c4e0129b53",
    2: "07fc5b90e142f9b8f21d37147fc7d8402bfc2a965b1538f49e716214180582c0",
}


@pytest.mark.parametrize("version", [1, 2])
def test_each_generator_version_draws_what_it_always_drew(version):
    assert scenes_digest(synthetic.GENERATORS[version].render) == PINNED[version]


def test_v2_is_deterministic_and_writes_the_same_bytes_twice(tmp_path):
    settings = dict(train=3, val=2, test=2, size=48, seed=5, version=2)
    generate_scenes(tmp_path / "a", **settings)
    generate_scenes(tmp_path / "b", **settings)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 3 * (3 + 2 + 2) + 1
    for path in files:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes(), path
    info = json.loads((tmp_path / "a" / "classes.json").read_text())
    assert info["generation"]["version"] == 2 and info["classes"] == list(synthetic_v2.CLASSES)


@pytest.fixture(scope="module")
def v2_scenes():
    return [synthetic_v2.render_scene(np.random.default_rng([0, 0, i]), 96) for i in range(120)]


def test_v2_has_16_or_more_classes_of_stuff_and_things_sharing_textures(v2_scenes):
    assert len(synthetic_v2.CLASSES) >= 16
    assert synthetic_v2.STUFF_CLASSES and synthetic_v2.THING_CLASSES
    families = Counter(synthetic_v2.CLASS_TEXTURES[c] for c in synthetic_v2.CLASSES)
    shared = [family for family, classes in families.items() if classes >= 2]
    assert len(shared) >= 5  # water/puddle, road/rock, grass/bush, sky/window/bird, ...
    assert {"brick-photo", "grass-photo", "gravel-photo", "photo-crop"} <= set(families)
    assert set(synthetic_v2.CLASS_TEXTURES.values()) == set(synthetic_v2.TEXTURE_FAMILIES)
    # Every class is drawn somewhere in 120 scenes.
    seen = set(np.unique(np.concatenate([label.ravel() for _, label, _ in v2_scenes])))
    assert seen == set(range(len(synthetic_v2.CLASSES)))


def test_v2_things_are_long_tailed_and_some_are_small(v2_scenes):
    things = {synthetic_v2.CLASSES.index(name) for name in synthetic_v2.THING_CLASSES}
    counts, smallest = Counter(), []
    for _, label, instances in v2_scenes:
        for instance in np.unique(instances):
            pixels = instances == instance
            cls = int(np.bincount(label[pixels]).argmax())
            if cls in things:
                counts[cls] += 1
                smallest.append(int(pixels.sum()))
    frequent, rare = max(counts.values()), min(counts.values())
    assert frequent >= 5 * rare
    assert min(smallest) < 30  # a thing of a few dozen pixels or fewer at 96 x 96


def test_test_split_is_held_out_and_leaves_train_and_val_as_they_were(tmp_path):
    with_test = generate_scenes(tmp_path / "with", train=2, val=2, test=2, size=32, seed=0)
    without = generate_scenes(tmp_path / "without", train=2, val=2, size=32, seed=0)
    assert set(with_test["splits"]) == {"train", "val", "test"} and "test" not in without["splits"]
    for folder in ("images/training", "images/validation", "annotations/validation"):
        for path in (tmp_path / "without" / folder).iterdir():
            assert path.read_bytes() == (tmp_path / "with" / folder / path.name).read_bytes()
    # The test scenes come from another seed: none equals a val scene of the same index.
    for index in range(2):
        test = (tmp_path / "with/annotations/test" / f"synthetic_test_{index:05d}.png").read_bytes()
        val = (tmp_path / "with/annotations/validation" / f"synthetic_val_{index:05d}.png").read_bytes()
        assert test != val
    other = generate_scenes(tmp_path / "other", train=2, val=2, test=2, size=32, seed=0,
                            test_seed=7)
    assert other["splits"]["test"] != with_test["splits"]["test"]
    assert other["splits"]["val"] == with_test["splits"]["val"]


def test_eval_split_test_builds_the_test_scenes(tmp_path):
    cfg = Config().replace(**{"data.dataset": "synthetic_v2", "data.root": str(tmp_path / "s"),
                              "data.synthetic_train": 4, "data.synthetic_val": 2,
                              "data.synthetic_test": 3, "data.synthetic_size": 32,
                              "data.eval_split": "test"})
    test = build_dataset(cfg.data, cfg.data.eval_split)
    assert isinstance(test, SyntheticV2Dataset) and len(test) == 3
    assert test.records[0].image_id == "synthetic_test_00000"
    assert test.num_classes == len(synthetic_v2.CLASSES)
    # Version 1 scenes are not read as version 2, nor the other way round.
    v1 = tmp_path / "v1"
    generate_scenes(v1, train=2, val=1, size=32, seed=0)
    with pytest.raises(Exception, match="other classes"):
        SyntheticV2Dataset(v1, "train")
    with pytest.raises(Exception, match="other classes"):
        SyntheticDataset(tmp_path / "s", "train")


# -- augmentation drawn per sample ----------------------------------------------------
@pytest.fixture
def train_set(tmp_path):
    cfg = Config().replace(**{"data.root": str(tmp_path / "s"), "data.synthetic_train": 8,
                              "data.synthetic_val": 1, "data.synthetic_size": 32,
                              "data.crop_size": 24, "data.scale_min": 0.5,
                              "data.scale_max": 1.5})
    return build_dataset(cfg.data, "train", augment_seed=3)


def test_a_samples_crop_depends_on_seed_epoch_and_index_only(train_set):
    train_set.set_epoch(2)
    torch.manual_seed(0)
    first = train_set[5]
    torch.manual_seed(12345)  # whatever else drew from the global stream
    torch.randn(1000)
    again = train_set[5]
    for key in first:
        assert torch.equal(first[key], again[key]), key
    train_set.set_epoch(3)
    later = train_set[5]
    assert not torch.equal(first["image"], later["image"])  # another epoch, another crop
    train_set.set_epoch(2)
    assert torch.equal(train_set[5]["image"], first["image"])


def test_loader_processes_do_not_change_the_data_stream(train_set):
    """The training loader as the worker builds it (pdml_ray.service.train.worker.build_loaders:
    a DistributedSampler, even for one worker, and the dataset's epoch) gives the same
    batches with or without loader processes."""
    def batches(workers: int) -> list[torch.Tensor]:
        sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=1,
                                     drop_last=True)
        loader = DataLoader(train_set, batch_size=4, sampler=sampler, num_workers=workers,
                            persistent_workers=workers > 0)
        seen = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            seen += [batch["image"] for batch in loader]
        return seen

    in_process, two_processes = batches(0), batches(2)
    assert len(in_process) == 4
    for a, b in zip(in_process, two_processes):
        assert torch.equal(a, b)
    assert not torch.equal(in_process[0], in_process[2])  # epochs differ
