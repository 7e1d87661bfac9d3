"""``data.loader_workers``: the worker loop's loaders with DataLoader processes against the
same loaders without, for the same seed (no Ray cluster: Train's loader wrapper, which
only moves batches to the worker's device, is left out).

What worker processes keep: every epoch's image order on every rank, the validation
batches bit for bit, and a run's batches for its seed. What they do not keep: the random
augmentation of a training image. It draws from torch's global RNG, which each loader
process seeds on its own (``base_seed + worker id``), so the crops of 2 loader processes
differ from those drawn in the training process itself.
"""

from __future__ import annotations

import pytest
import torch

from pdml_ray.data import ensure_synthetic
from pdml_ray.service.train import worker
from tests.helpers import tiny_config

EPOCHS = 2


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loader_workers")
    cfg = tiny_config(folder, folder / "synthetic", f"sqlite:///{folder / 'mlflow.db'}")
    ensure_synthetic(cfg.data)
    return folder


def batches(scenes, monkeypatch, *, loader_workers: int, rank: int = 0) -> tuple[list, list]:
    """(training batches of EPOCHS epochs, validation batches) of worker ``rank`` of 2,
    built after seeding as the worker loop seeds."""
    monkeypatch.setattr(worker.ray.train.torch, "prepare_data_loader",
                        lambda loader, **kwargs: loader)
    cfg = tiny_config(scenes, scenes / "synthetic", f"sqlite:///{scenes / 'mlflow.db'}",
                      data={"loader_workers": loader_workers})
    torch.manual_seed(cfg.train.seed + rank)
    _, _, train_loader, val_loader, _ = worker.build_loaders(cfg, rank, 2)
    train = []
    for epoch in range(EPOCHS):
        train_loader.sampler.set_epoch(epoch)
        train += list(train_loader)
    return train, list(val_loader)


def same_batches(first: list[dict], second: list[dict]) -> bool:
    return len(first) == len(second) and all(
        a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
        for a, b in zip(first, second))


@pytest.mark.parametrize("rank", [0, 1])
def test_loader_processes_keep_the_image_order_and_the_validation_batches(scenes, monkeypatch,
                                                                           rank):
    here_train, here_val = batches(scenes, monkeypatch, loader_workers=0, rank=rank)
    spawned_train, spawned_val = batches(scenes, monkeypatch, loader_workers=2, rank=rank)
    order = [batch["image_index"].tolist() for batch in here_train]
    assert order == [batch["image_index"].tolist() for batch in spawned_train]
    assert len(order) == EPOCHS * 4  # 16 images, 2 per rank and step: 4 steps per epoch
    assert order[:4] != order[4:]  # reshuffled between epochs, the same way in both
    assert same_batches(here_val, spawned_val)
    assert sum(len(batch["image_index"]) for batch in here_val) == 3  # 6 val images, 2 ranks


def test_loader_processes_give_the_same_batches_for_the_same_seed(scenes, monkeypatch):
    first, _ = batches(scenes, monkeypatch, loader_workers=2)
    again, _ = batches(scenes, monkeypatch, loader_workers=2)
    assert same_batches(first, again)
