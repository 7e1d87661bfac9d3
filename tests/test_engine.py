"""The pure-torch training step and loop, in one process on CPU (no Ray, no MLflow)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from pdml_ray.config import Config, from_dict
from pdml_ray.data import build_dataset, ensure_synthetic
from pdml_ray.engine import (build_model_for, compute_loss, evaluate, make_optimizer, poly_lr,
                             train_one_epoch)
from pdml_ray.extension import extend_from_logits
from pdml_ray.losses import point_cross_entropy, split_cross_entropy
from pdml_ray.mining import InBatchMiner
from pdml_ray.models import build_model


def test_poly_lr_closed_form():
    assert poly_lr(0.01, 0, 100, 0.8) == 0.01
    assert poly_lr(0.01, 50, 100, 0.8) == pytest.approx(0.01 * 0.5 ** 0.8)
    assert poly_lr(0.01, 100, 100, 0.8) == 0.0
    assert poly_lr(0.01, 150, 100, 0.8) == 0.0  # never negative past the end


def test_optimizer_groups_follow_the_head_multiplier():
    cfg = from_dict({"train": {"optimizer": "sgd", "lr": 0.1, "head_lr_mult": 10.0}})
    model = build_model(num_classes=3, backbone="resnet18")
    optimizer = make_optimizer(cfg, model)
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs == [pytest.approx(0.1), pytest.approx(1.0)]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9


def _fake_step(num_classes=3, size=16, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, size, size, generator=g, requires_grad=True)
    embed = torch.randn(2, dim, size // 4, size // 4, generator=g, requires_grad=True)
    mask = torch.randint(0, num_classes, (2, size, size), generator=g)
    points = torch.full_like(mask, 255)
    for b, (y, x) in itertools.product(range(2), [(2, 3), (9, 12), (13, 5)]):
        points[b, y, x] = mask[b, y, x]
    batch = {"point_labels": points, "mask": mask, "image_index": torch.tensor([10, 11])}
    return {"out": logits, "embed": embed}, batch


def test_compute_loss_modes():
    output, batch = _fake_step()
    full = from_dict({"train": {"supervision": "full"}})
    loss, logs = compute_loss(output, batch, cfg=full, epoch=0, miner=None)
    assert loss.item() == pytest.approx(point_cross_entropy(output["out"], batch["mask"]).item())
    assert "loss_pdml" not in logs

    point = from_dict({"train": {"supervision": "point"}})
    loss, _ = compute_loss(output, batch, cfg=point, epoch=0, miner=None)
    assert loss.item() == pytest.approx(
        point_cross_entropy(output["out"], batch["point_labels"]).item())

    pdml = from_dict({"train": {"supervision": "point+pdml"}, "loss": {"pdml_weight": 0.5}})
    loss, logs = compute_loss(output, batch, cfg=pdml, epoch=0, miner=InBatchMiner(pdml.loss))
    assert logs["triplets"] > 0
    assert loss.item() == pytest.approx(logs["loss_ce"] + 0.5 * logs["loss_pdml"], rel=1e-6)


def test_extension_starts_at_its_epoch():
    output, batch = _fake_step()
    cfg = from_dict({"train": {"supervision": "point+pdml+ext"},
                     "extension": {"start_epoch": 2, "threshold": 0.01, "window": 5}})
    _, before = compute_loss(output, batch, cfg=cfg, epoch=1, miner=InBatchMiner(cfg.loss))
    _, after = compute_loss(output, batch, cfg=cfg, epoch=2, miner=InBatchMiner(cfg.loss))
    assert "ext_pixels" not in before
    assert after["ext_pixels"] > 0  # a threshold of 0.01 extends around every point
    assert after["loss_ce"] != before["loss_ce"]


def test_point_ext_extends_without_pdml():
    output, batch = _fake_step()
    cfg = from_dict({"train": {"supervision": "point+ext"},
                     "extension": {"start_epoch": 0, "threshold": 0.01, "window": 5,
                                   "method": "region", "weighting": "pooled"}})
    assert cfg.uses_extension and not cfg.uses_pdml
    loss, logs = compute_loss(output, batch, cfg=cfg, epoch=0, miner=InBatchMiner(cfg.loss))
    assert "loss_pdml" not in logs and logs["ext_pixels"] > 0
    extended = extend_from_logits(output["out"].detach(), batch["point_labels"], threshold=0.01,
                                  window=5, method="region")
    assert loss.item() == pytest.approx(point_cross_entropy(output["out"], extended).item())


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine") / "synthetic"
    data = from_dict({"data": {"root": str(root), "synthetic_train": 8, "synthetic_val": 2,
                               "synthetic_size": 48, "crop_size": 48, "scale_min": 1.0,
                               "scale_max": 1.0, "hflip": False}}).data
    ensure_synthetic(data)
    return data


@pytest.mark.parametrize("mode", ["full", "point", "point+pdml", "point+pdml+ext"])
def test_training_lowers_loss_and_raises_train_miou(scenes, mode):
    torch.manual_seed(0)
    cfg = Config(data=scenes).replace(**{
        "train.supervision": mode, "train.optimizer": "adamw", "train.lr": 3e-3,
        "train.head_lr_mult": 1.0, "train.log_every_steps": 4, "train.batch_size": 4,
        "loss.margin": 5.0, "loss.subgroup_size": 2, "extension.start_epoch": 3,
        "model.backbone": "resnet18"})
    train = build_dataset(cfg.data, "train")
    loader = DataLoader(train, batch_size=4, shuffle=False)
    model = build_model(num_classes=train.num_classes, backbone="resnet18")
    optimizer = make_optimizer(cfg, model)
    miner = InBatchMiner(cfg.loss)
    device = torch.device("cpu")

    before = evaluate(model, loader, num_classes=train.num_classes, device=device)["miou"]
    logged: list[dict] = []
    step, epochs = 0, 10
    for epoch in range(epochs):
        step = train_one_epoch(model, loader, optimizer, cfg=cfg, epoch=epoch, start_step=step,
                               total_steps=epochs * len(loader), device=device, miner=miner,
                               on_log=lambda s, means: logged.append(means))
    after = evaluate(model, loader, num_classes=train.num_classes, device=device)["miou"]

    assert step == epochs * len(loader)
    assert logged[-1]["loss"] < 0.7 * logged[0]["loss"]
    assert after > before + 0.05
    if "pdml" in mode:
        assert all(means["triplets"] > 0 for means in logged)
    if mode.endswith("+ext"):
        assert "ext_accuracy" in logged[-1] and 0.0 <= logged[-1]["ext_accuracy"] <= 1.0


class StepRecordingMiner(InBatchMiner):
    """An in-batch miner that keeps the steps it is called at and reports the last one."""

    def __init__(self, loss_cfg):
        super().__init__(loss_cfg)
        self.steps: list[int] = []

    def __call__(self, points, *, step: int):
        self.steps.append(step)
        self.stats = {"miner_step": float(step)}
        return super().__call__(points, step=step)


def test_the_miner_works_at_the_global_step_and_its_stats_are_logged(scenes):
    cfg = Config(data=scenes).replace(**{"train.supervision": "point+pdml", "train.batch_size": 2,
                                         "train.log_every_steps": 1, "loss.subgroup_size": 2,
                                         "model.backbone": "resnet18"})
    loader = DataLoader(Subset(build_dataset(cfg.data, "train"), range(6)), batch_size=2)
    model = build_model(num_classes=8, backbone="resnet18")
    miner = StepRecordingMiner(cfg.loss)
    logged: dict[int, dict] = {}
    step = train_one_epoch(model, loader, make_optimizer(cfg, model), cfg=cfg, epoch=2,
                           start_step=5, total_steps=7, device=torch.device("cpu"), miner=miner,
                           on_log=lambda at, means: logged.update({at: means}))
    assert step == 7 and miner.steps == [5, 6]  # a resumed run's steps, stopped at the total
    assert {at: means["miner_step"] for at, means in logged.items()} == {6: 5.0, 7: 6.0}


def test_non_finite_loss_stops_training(scenes):
    cfg = Config(data=scenes).replace(**{"train.supervision": "point", "train.batch_size": 4,
                                         "model.backbone": "resnet18"})
    train = Subset(build_dataset(cfg.data, "train"), [0, 1, 2, 3])
    model = build_model(num_classes=8, backbone="resnet18")
    with torch.no_grad():
        next(model.classifier.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 0"):
        train_one_epoch(model, DataLoader(train, batch_size=4), make_optimizer(cfg, model),
                        cfg=cfg, epoch=0, start_step=0, total_steps=1,
                        device=torch.device("cpu"))


def test_every_step_is_in_exactly_one_logged_mean(scenes):
    """Epochs of 3 steps, a log every 2: the epoch's tail is logged at its end, not lost."""
    cfg = Config(data=scenes).replace(**{"train.supervision": "point", "train.batch_size": 2,
                                         "train.log_every_steps": 2, "model.backbone": "resnet18"})
    loader = DataLoader(Subset(build_dataset(cfg.data, "train"), range(6)), batch_size=2)
    model = build_model(num_classes=8, backbone="resnet18")
    optimizer = make_optimizer(cfg, model)
    logged: list[int] = []
    step = 0
    for epoch in range(2):
        step = train_one_epoch(model, loader, optimizer, cfg=cfg, epoch=epoch, start_step=step,
                               total_steps=6, device=torch.device("cpu"),
                               on_log=lambda at, means: logged.append(at))
    assert logged == [2, 3, 4, 6]


@pytest.mark.parametrize("weighting", ["pooled", "separate", "balanced"])
def test_extended_pixels_are_weighed_as_configured(weighting):
    cfg = Config().replace(**{"train.supervision": "point+pdml+ext", "extension.start_epoch": 1,
                              "extension.weighting": weighting})
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(2, 3, 12, 12, generator=g)
    points = torch.full((2, 12, 12), 255)
    points[0, 3, 3], points[1, 8, 5], points[1, 2, 9] = 0, 1, 2
    # Make every point's square confidently its class, so the extension adds pixels.
    for b, y, x in ((0, 3, 3), (1, 8, 5), (1, 2, 9)):
        logits[b, int(points[b, y, x]), y - 1:y + 2, x - 1:x + 2] += 20
    batch = {"point_labels": points, "mask": points.clone(), "image_index": torch.arange(2)}
    output = {"out": logits, "embed": torch.zeros(2, 4, 3, 3)}
    before, _ = compute_loss(output, batch, cfg=cfg, epoch=0, miner=None)
    after, logs = compute_loss(output, batch, cfg=cfg, epoch=1, miner=None)
    extended = extend_from_logits(logits, points, method=cfg.extension.method,
                                  threshold=cfg.extension.threshold, window=cfg.extension.window)
    assert (extended != 255).sum() > (points != 255).sum()  # the extension added pixels
    assert before.item() == pytest.approx(point_cross_entropy(logits, points).item())
    want = (point_cross_entropy(logits, extended) if weighting == "pooled"
            else split_cross_entropy(logits, extended, points,
                                     extended_weight=cfg.resolved().extension.weight_at(1, cfg.train.epochs),
                                     balanced=weighting == "balanced"))
    assert after.item() == pytest.approx(want.item()) and logs["loss_ce"] == after.item()


def _extending_batch():
    g = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(2, 3, 12, 12, generator=g)
    points = torch.full((2, 12, 12), 255)
    points[0, 3, 3], points[1, 8, 5] = 0, 1
    for b, y, x in ((0, 3, 3), (1, 8, 5)):
        logits[b, int(points[b, y, x]), y - 1:y + 2, x - 1:x + 2] += 20
    batch = {"point_labels": points, "mask": points.clone(), "image_index": torch.arange(2)}
    return {"out": logits, "embed": torch.zeros(2, 4, 3, 3)}, batch


def _point_and_extended_terms(output, batch, cfg) -> tuple[float, float]:
    """The mean CE over the points and over the pixels the extension adds, each alone."""
    logits, points = output["out"], batch["point_labels"]
    extended = extend_from_logits(logits, points, method=cfg.extension.method,
                                  threshold=cfg.extension.threshold, window=cfg.extension.window)
    mask = (extended != 255) & (points == 255)
    ext_term = torch.nn.functional.cross_entropy(logits, extended, ignore_index=255,
                                                 reduction="none")[mask].mean().item()
    return point_cross_entropy(logits, points).item(), ext_term


@pytest.mark.parametrize("epochs, fraction, first", [(6, 0.5, 3), (15, 0.5, 7), (10, 0.0, 0),
                                                      (4, 0.3, 1)])
def test_extension_starts_after_its_fraction_of_the_epochs(epochs, fraction, first):
    cfg = Config().replace(**{"train.supervision": "point+pdml+ext", "train.epochs": epochs,
                              "extension.start_fraction": fraction})
    output, batch = _extending_batch()
    points = batch["point_labels"]
    for epoch in range(epochs):
        loss, logs = compute_loss(output, batch, cfg=cfg, epoch=epoch, miner=None)
        assert ("ext_pixels" in logs) == (epoch >= first)
    # An explicit start_epoch wins over the fraction.
    explicit = cfg.replace(**{"extension.start_epoch": epochs - 1})
    assert explicit.extension.first_epoch(epochs) == epochs - 1
    loss, _ = compute_loss(output, batch, cfg=explicit, epoch=epochs - 2, miner=None)
    assert loss.item() == pytest.approx(point_cross_entropy(output["out"], points).item())


@pytest.mark.parametrize("pretrained, weight", [(None, 4.0), ("weights.pt", 16.0)])
def test_the_default_extension_weight_depends_on_the_backbones_start(pretrained, weight):
    # From pretrained weights the extended pixels weigh 16 times the points, from random
    # init 4 times (config.EXTENDED_WEIGHT); either way they start after half the epochs.
    cfg = Config().replace(**{"train.supervision": "point+pdml+ext", "train.epochs": 12,
                              "model.pretrained": pretrained})
    first = 6
    output, batch = _extending_batch()
    point_term, ext_term = _point_and_extended_terms(output, batch, cfg)
    for epoch in (first - 1, first, 11):
        loss, logs = compute_loss(output, batch, cfg=cfg, epoch=epoch, miner=None)
        want = point_term + (weight * ext_term if epoch >= first else 0.0)
        assert loss.item() == pytest.approx(want, rel=1e-5)
        assert ("ext_pixels" in logs) == (epoch >= first)


def test_separate_extension_weight_ramps_in_linearly():
    cfg = Config().replace(**{"train.supervision": "point+pdml+ext", "train.epochs": 8,
                              "extension.start_epoch": 2, "extension.weighting": "separate",
                              "extension.weight": 0.6, "extension.ramp_epochs": 3})
    output, batch = _extending_batch()
    point_term, ext_term = _point_and_extended_terms(output, batch, cfg)
    # epoch 2: 1/3 of 0.6; epoch 3: 2/3; epoch 4 and later: the full 0.6.
    for epoch, weight in ((2, 0.2), (3, 0.4), (4, 0.6), (7, 0.6)):
        loss, _ = compute_loss(output, batch, cfg=cfg, epoch=epoch, miner=None)
        assert loss.item() == pytest.approx(point_term + weight * ext_term, rel=1e-5)


@pytest.mark.parametrize("supervision, embedding, has_projection", [
    ("point+pdml", "projection", True), ("point+pdml+ext", "projection", True),
    ("point", "projection", False), ("full", "projection", False),
    ("point+pdml", "features", False)])
def test_the_projection_head_exists_only_where_pdml_trains_it(supervision, embedding,
                                                                has_projection):
    cfg = Config().replace(**{"train.supervision": supervision, "model.embedding": embedding,
                              "model.projection_dim": 8})
    model = build_model_for(cfg, 3)
    assert (model.projection is not None) == has_projection
    if has_projection:
        assert model(torch.randn(1, 3, 16, 16))["embed"].shape[1] == 8



def test_the_boundary_margin_reaches_the_extension():
    output, batch = _extending_batch()
    batch["mask"] = output["out"].argmax(1)  # every pixel known, so every one is counted
    losses = {}
    for margin in (0, 1):
        cfg = Config().replace(**{"train.supervision": "point+pdml+ext", "extension.start_epoch": 0,
                                  "extension.boundary_margin": margin})
        loss, logs = compute_loss(output, batch, cfg=cfg, epoch=0, miner=None)
        extended = extend_from_logits(output["out"], batch["point_labels"],
                                      method=cfg.extension.method,
                                      threshold=cfg.extension.threshold, boundary_margin=margin)
        assert logs["ext_pixels"] == float(((extended != 255) & (batch["point_labels"] == 255)).sum())
        want = split_cross_entropy(output["out"], extended, batch["point_labels"],
                                   extended_weight=cfg.resolved().extension.weight_at(0, cfg.train.epochs))
        assert loss.item() == pytest.approx(want.item())
        losses[margin] = logs["ext_pixels"]
    assert 0 < losses[1] < losses[0]
