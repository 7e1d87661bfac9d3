"""ConfusionMatrix: closed-form metrics, ignored pixels, and the cross-process reduction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pdml_ray.metrics import ConfusionMatrix

IGNORE = 255


def test_metrics_by_hand():
    cm = ConfusionMatrix(4)
    target = torch.tensor([[0, 0, 1, 1], [1, 2, IGNORE, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 3, 0]])
    cm.update(pred, target)
    assert cm.mat.tolist() == [[1, 1, 0, 0], [0, 2, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    result = cm.compute()
    # IoU: class 0 1/2, class 1 2/4, class 2 1/2; class 3 absent from both: NaN.
    assert result["per_class_iou"][:3] == pytest.approx([0.5, 0.5, 0.5])
    assert math.isnan(result["per_class_iou"][3])
    assert result["miou"] == pytest.approx(0.5)
    assert result["pixel_acc"] == pytest.approx(4 / 6)


def test_update_accumulates_any_shape_and_reset_clears():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cm.update(torch.tensor([[[2]]]), torch.tensor([[[1]]]))
    assert int(cm.mat.sum()) == 3 and cm.compute()["pixel_acc"] == pytest.approx(2 / 3)
    assert cm.compute() == cm.compute()  # computing twice changes nothing
    cm.reset()
    assert int(cm.mat.sum()) == 0 and math.isnan(cm.compute()["miou"])


def test_out_of_range_class_ids_are_refused():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target"):
        cm.update(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="pred"):
        cm.update(torch.tensor([5]), torch.tensor([0]))


def shard(seed: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 10 + rank)
    target = torch.randint(0, 5, (3, 8, 8), generator=g)
    target[torch.rand(3, 8, 8, generator=g) < 0.2] = IGNORE
    return torch.randint(0, 5, (3, 8, 8), generator=g), target


def _reduce_worker(rank: int, world_size: int, rendezvous: str, out_path: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world_size)
    try:
        cm = ConfusionMatrix(5)
        cm.update(*shard(0, rank))
        local = cm.mat.clone()
        first, second = cm.compute(), cm.compute()  # collectives: every rank calls them
        reduced = cm.reduce_from_all_processes()
        if rank == 0:
            torch.save({"reduced": reduced, "local": local,
                        "local_after": cm.mat.clone(), "first": first, "second": second},
                       out_path)
    finally:
        dist.destroy_process_group()


def test_reduction_over_two_gloo_processes(tmp_path):
    out_path = tmp_path / "result.pt"
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "rendezvous"), str(out_path)), nprocs=2,
             join=True)
    result = torch.load(out_path, weights_only=False)
    everything = ConfusionMatrix(5)
    for rank in range(2):
        everything.update(*shard(0, rank))
    assert torch.equal(result["reduced"], everything.mat)
    assert torch.equal(result["local_after"], result["local"])  # the reduction left it alone
    expected = everything.compute()
    for name in ("first", "second"):
        assert result[name]["miou"] == pytest.approx(expected["miou"])
        assert result[name]["pixel_acc"] == pytest.approx(expected["pixel_acc"])
        assert result[name]["per_class_iou"] == pytest.approx(expected["per_class_iou"])
