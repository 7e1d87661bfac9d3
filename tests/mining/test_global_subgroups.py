"""Global subgroups across workers: the 2-worker PDML gradient equals the single-process
gradient on the same global batch (real gloo process group, no Ray needed), also when
one worker holds no point at all.

The workers hold the global batch the way DistributedSampler deals it out: rank r holds
positions r, r + WORLD, ..., so a subgroup of LOCAL_BATCH consecutive positions holds
images of both workers."""

from __future__ import annotations

import math
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pdml_ray.config import LossConfig
from pdml_ray.losses import mine_triplets, pdml_terms
from pdml_ray.mining import GlobalSubgroupMiner, PointBatch

WORLD, LOCAL_BATCH, DIM_IN, DIM = 2, 4, 6, 5
LOSS = LossConfig(margin=3.0, alpha=0.8, beta=1.0, subgroup_size=4, pairing="all")


def global_batch(seed: int):
    """Points of 2*LOCAL_BATCH images with uneven point counts and shared classes."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 6, (WORLD * LOCAL_BATCH,), generator=g)
    position = torch.repeat_interleave(torch.arange(WORLD * LOCAL_BATCH), counts)
    labels = torch.randint(0, 3, (len(position),), generator=g)
    inputs = torch.randn(len(position), DIM_IN, generator=g)
    weight = torch.randn(DIM_IN, DIM, generator=g)
    image_ids = position * 10 + 7  # global dataset indices need not be positions
    return inputs, labels, image_ids, position, weight


def reference_gradient(seed: int):
    inputs, labels, image_ids, position, weight = global_batch(seed)
    weight = weight.clone().requires_grad_()
    terms = pdml_terms(inputs @ weight, labels, image_ids, position // LOSS.subgroup_size,
                       margin=LOSS.margin, alpha=LOSS.alpha, beta=LOSS.beta, pairing=LOSS.pairing)
    terms.loss.backward()
    return terms.loss.detach(), weight.grad


SEEDS = (0, 1, 2)


def _worker(rank: int, init_file: str, out_folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    for seed in SEEDS:
        _distributed_step(rank, seed, f"{out_folder}/out{seed}.pt")
    dist.destroy_process_group()


def _distributed_step(rank: int, seed: int, out_file: str) -> None:
    inputs, labels, image_ids, position, weight = global_batch(seed)
    mine = position % WORLD == rank
    weight = weight.clone().requires_grad_()
    points = PointBatch(inputs[mine] @ weight, labels[mine], image_ids[mine],
                        position[mine] // WORLD)
    terms = GlobalSubgroupMiner(LOSS)(points, step=0)
    terms.loss.backward()
    grad = weight.grad.clone()
    dist.all_reduce(grad)
    grad /= WORLD  # what DDP does to parameter gradients
    loss = terms.loss.detach().clone()
    dist.all_reduce(loss)
    if rank == 0:
        torch.save({"grad": grad, "loss": loss / WORLD}, out_file)


def test_global_subgroups_of_the_local_batch_size_span_workers():
    """Without this, the gradient test below would also pass for a numbering under which
    ``global`` mining never leaves a worker."""
    for seed in SEEDS:
        _, labels, image_ids, position, _ = global_batch(seed)
        triplets = mine_triplets(labels, image_ids, position // LOSS.subgroup_size,
                                 pairing=LOSS.pairing)
        rank_of = position % WORLD
        anchor, positive, negative = (rank_of[triplets[:, i]] for i in range(3))
        assert ((anchor != positive) | (anchor != negative)).any()


def test_two_worker_gradient_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    for seed in SEEDS:
        distributed = torch.load(tmp_path / f"out{seed}.pt", weights_only=True)
        loss, grad = reference_gradient(seed)
        assert loss > 0 and grad.abs().sum() > 0  # a case with triplets, not a vacuous one
        torch.testing.assert_close(distributed["loss"], loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(distributed["grad"], grad, rtol=1e-5, atol=1e-6)


# -- a worker without points ---------------------------------------------------------------
EMPTY_RANK = 0


def empty_rank_batch(seed: int = 3):
    """The global batch of ``global_batch`` without the points of EMPTY_RANK's images (as
    when none of its images has a labelled point this step)."""
    inputs, labels, image_ids, position, weight = global_batch(seed)
    keep = position % WORLD != EMPTY_RANK
    return inputs[keep], labels[keep], image_ids[keep], position[keep], weight


def _empty_rank_worker(rank: int, init_file: str, out_folder: str) -> None:
    # A bounded wait: a rank that skipped the gather's backward fails the test, not hangs it.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=120))
    inputs, labels, image_ids, position, weight = empty_rank_batch()
    mine = position % WORLD == rank
    weight = weight.clone().requires_grad_()
    embeddings = inputs[mine] @ weight
    embeddings.retain_grad()
    miner = GlobalSubgroupMiner(LOSS)
    terms = miner(PointBatch(embeddings, labels[mine], image_ids[mine], position[mine] // WORLD),
                  step=0)
    terms.loss.backward()
    torch.save({"points": int(mine.sum()), "loss": terms.loss.detach(),
                "triplets": terms.num_triplets, "stats": miner.stats,
                "embedding_grad": embeddings.grad, "weight_grad": weight.grad},
               f"{out_folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_a_worker_without_points_joins_and_the_gradient_stays_exact(tmp_path):
    _, labels, image_ids, position, _ = empty_rank_batch()
    reference_triplets = mine_triplets(labels, image_ids, position // LOSS.subgroup_size,
                                       pairing=LOSS.pairing).shape[0]
    assert reference_triplets > 0  # the other worker's images alone still form triplets

    mp.spawn(_empty_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    empty, full = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
                   for r in (EMPTY_RANK, 1 - EMPTY_RANK))
    assert empty["points"] == 0 and full["points"] == len(labels)

    # Both workers mined the same global triplets; all are anchored by the one with points.
    assert empty["stats"] == full["stats"] == {"triplets_global": float(reference_triplets)}
    assert empty["triplets"] == 0 and full["triplets"] == reference_triplets
    assert empty["loss"].item() == 0.0 and math.isfinite(full["loss"].item())

    # The empty worker's (0, D) embeddings got their (empty) gradient and its weight a zero
    # one; the other worker's embeddings got a non-zero gradient.
    assert empty["embedding_grad"].shape == (0, DIM)
    assert empty["weight_grad"] is not None and not empty["weight_grad"].any()
    assert full["embedding_grad"].abs().sum() > 0

    # What DDP makes of it (the mean of the workers' gradients and losses) is the
    # single-process loss and gradient of the same global batch.
    inputs, labels, image_ids, position, weight = empty_rank_batch()
    weight = weight.clone().requires_grad_()
    reference = pdml_terms(inputs @ weight, labels, image_ids, position // LOSS.subgroup_size,
                           margin=LOSS.margin, alpha=LOSS.alpha, beta=LOSS.beta,
                           pairing=LOSS.pairing)
    reference.loss.backward()
    assert reference.loss > 0
    torch.testing.assert_close((empty["loss"] + full["loss"]) / WORLD, reference.loss.detach(),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((empty["weight_grad"] + full["weight_grad"]) / WORLD, weight.grad,
                               rtol=1e-5, atol=1e-6)
