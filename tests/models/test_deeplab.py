"""The composed model: outputs, heads and optimizer parameter groups."""

from __future__ import annotations

import pytest
import torch

from pdml_ray.models import ASPPv2, build_model, parameter_groups


@pytest.mark.parametrize("backbone, output_stride, head", [
    ("resnet18", 8, "aspp"), ("resnet18", 16, "linear"), ("resnet34", 8, "linear"),
    ("resnet34", 16, "aspp"), ("resnet50", 8, "aspp"), ("resnet101", 16, "linear"),
])
def test_outputs_on_odd_sizes(backbone, output_stride, head):
    torch.manual_seed(0)
    model = build_model(num_classes=7, backbone=backbone, output_stride=output_stride,
                        head=head).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 47))
    channels = 512 if backbone in ("resnet18", "resnet34") else 2048
    size = (5, 6) if output_stride == 8 else (3, 3)
    assert set(out) == {"out", "embed"}
    assert out["out"].shape == (1, 7, 33, 47)
    assert out["embed"].shape == (1, channels, *size)


def test_classifier_reads_the_embedding():
    model = build_model(num_classes=3, backbone="resnet18", head="linear").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 24, 24))
        coarse = model.classifier(out["embed"])
        upsampled = torch.nn.functional.interpolate(coarse, size=(24, 24), mode="bilinear",
                                                    align_corners=False)
    torch.testing.assert_close(out["out"], upsampled)


def test_aspp_sums_four_atrous_branches():
    head = ASPPv2(6, 3)
    assert [conv.dilation for conv in head.branches] == [(r, r) for r in (6, 12, 18, 24)]
    x = torch.randn(1, 6, 9, 9)
    torch.testing.assert_close(head(x), sum(conv(x) for conv in head.branches))
    single = ASPPv2(6, 3, rates=(1,))
    assert head(x).shape == single(x).shape == (1, 3, 9, 9)


def test_gradients_reach_backbone_and_classifier():
    model = build_model(num_classes=3, backbone="resnet18", output_stride=16)
    out = model(torch.randn(2, 3, 32, 32))
    (out["out"].mean() + out["embed"].mean()).backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(conv.weight.grad is not None for conv in model.classifier.branches)


def test_parameter_groups_cover_every_parameter_once():
    model = build_model(num_classes=5, backbone="resnet18", head="aspp")
    groups = parameter_groups(model, lr=0.01, head_lr_mult=10.0, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["backbone", "classifier"]
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.1])
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.classifier.parameters()}
    optimizer = torch.optim.SGD(groups, lr=0.01, momentum=0.9)
    assert [g["lr_mult"] for g in optimizer.param_groups] == [1.0, 10.0]


def test_parameter_groups_skip_frozen_and_refuse_strays():
    model = build_model(num_classes=5, backbone="resnet18", head="linear")
    model.backbone.conv1.weight.requires_grad_(False)
    groups = parameter_groups(model, lr=1.0)
    assert all(p is not model.backbone.conv1.weight for p in groups[0]["params"])
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="extra.weight"):
        parameter_groups(model, lr=1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"backbone": "vgg16"}, "resnet18, resnet34, resnet50, resnet101"),
    ({"output_stride": 4}, r"\(8, 16\)"),
    ({"head": "psp"}, "aspp, linear"),
    ({"num_classes": 0}, "num_classes"),
])
def test_build_model_rejects_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**{"num_classes": 3, "backbone": "resnet18", **kwargs})


def test_projection_head_embeds_on_a_sphere_and_trains_at_the_head_rate():
    model = build_model(num_classes=4, backbone="resnet18", projection_dim=16,
                        projection_radius=3.0)
    out = model(torch.randn(2, 3, 32, 32))
    assert out["out"].shape == (2, 4, 32, 32) and out["embed"].shape == (2, 16, 4, 4)
    norms = out["embed"].norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, 3.0), atol=1e-4)
    groups = {g["name"]: g for g in parameter_groups(model, lr=0.1, head_lr_mult=10.0)}
    assert set(groups) == {"backbone", "classifier", "projection"}
    assert groups["projection"]["lr"] == pytest.approx(1.0)
    counted = sum(p.numel() for g in groups.values() for p in g["params"])
    assert counted == sum(p.numel() for p in model.parameters())
    # Without a projection, embed is the very feature map the classifier reads.
    plain = build_model(num_classes=4, backbone="resnet18")
    assert plain.projection is None
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(plain(x)["embed"], plain.backbone(x)["out"])
    with pytest.raises(ValueError, match="projection_dim must be >= 0"):
        build_model(num_classes=4, backbone="resnet18", projection_dim=-1)


def test_the_projection_head_leaves_the_random_stream_as_it_found_it():
    # A seed must draw the same augmentations with or without PDML's head, so that point
    # CE and PDML paired on a seed differ by the loss only; the head itself is seeded.
    def build(projection_dim):
        torch.manual_seed(7)
        model = build_model(num_classes=4, backbone="resnet18", projection_dim=projection_dim)
        return model, torch.rand(5)

    plain, after_plain = build(0)
    headed, after_headed = build(16)
    again, after_again = build(16)
    assert torch.equal(after_plain, after_headed)
    shared = plain.state_dict()
    assert all(torch.equal(value, headed.state_dict()[key]) for key, value in shared.items())
    assert all(torch.equal(value, again.state_dict()[key])
               for key, value in headed.state_dict().items())
    # The head is not left at some fixed value: another seed initialises it differently.
    torch.manual_seed(8)
    other = build_model(num_classes=4, backbone="resnet18", projection_dim=16)
    assert not torch.equal(other.projection.layers[0].weight, headed.projection.layers[0].weight)
