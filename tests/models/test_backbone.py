"""Dilated ResNet backbones: strides, the atrous equivalence, and loading weights."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18, resnet50

from pdml_ray.models import build_backbone, dilated_resnet, embed_channels, resolve_weights


def layer4(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


@pytest.mark.parametrize("name, output_stride, plain", [
    ("resnet18", 8, resnet18), ("resnet18", 16, resnet18), ("resnet50", 8, resnet50)])
def test_atrous_network_is_the_strided_network_evaluated_densely(name, output_stride, plain):
    # With the same weights, the dilated network's features at every (32 / OS)-th position
    # are exactly the stride-32 network's features: dilation replaces stride, nothing else.
    torch.manual_seed(0)
    strided = plain(weights=None).eval()
    dilated = dilated_resnet(name, output_stride).eval()
    dilated.load_state_dict(strided.state_dict())
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        dense, sparse = layer4(dilated, x), layer4(strided, x)
    step = 32 // output_stride
    assert dense.shape[-2:] == (6 if output_stride == 8 else 3, 8 if output_stride == 8 else 4)
    torch.testing.assert_close(dense[..., ::step, ::step], sparse, rtol=1e-4, atol=1e-4)


def test_basic_block_dilations():
    model = dilated_resnet("resnet34", 8)
    for stage, first, later in ((model.layer3, 1, 2), (model.layer4, 2, 4)):
        assert stage[0].conv1.stride == (1, 1) and stage[0].downsample[0].stride == (1, 1)
        assert stage[0].conv1.dilation == stage[0].conv1.padding == (first, first)
        assert stage[0].conv2.dilation == (later, later)
        assert all(block.conv1.dilation == block.conv2.dilation == (later, later)
                   for block in list(stage)[1:])
    assert model.layer2[0].conv1.stride == (2, 2)


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
def test_bottleneck_dilations(name):
    # Construction only: one tiny forward per deep backbone is in test_deeplab.
    for output_stride, layer3, layer4 in ((8, (1, 2), (2, 4)), (16, None, (1, 2))):
        model = dilated_resnet(name, output_stride)
        for stage, dilations in ((model.layer3, layer3), (model.layer4, layer4)):
            if dilations is None:
                assert stage[0].conv2.stride == (2, 2)
                continue
            assert stage[0].conv2.stride == stage[0].downsample[0].stride == (1, 1)
            assert stage[0].conv2.dilation == (dilations[0],) * 2
            assert all(block.conv2.dilation == block.conv2.padding == (dilations[1],) * 2
                       for block in list(stage)[1:])


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_feature_map_size_and_channels(name, output_stride):
    backbone = build_backbone(name, output_stride).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 33, 47))["out"]
    size = (5, 6) if output_stride == 8 else (3, 3)  # ceil(33 / OS), ceil(47 / OS)
    assert features.shape == (1, embed_channels(name), *size)


def test_state_dict_file_loads_into_the_backbone(tmp_path):
    source = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)  # includes fc.*, which must be dropped
    backbone = build_backbone("resnet18", 8, pretrained=str(path))
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_mismatched_state_dict_names_the_keys(tmp_path):
    state = resnet18(weights=None).state_dict()
    del state["layer4.1.bn2.weight"]
    state["head.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \[layer4.1.bn2.weight\].*"
                                         r"unexpected keys \[head.weight\]"):
        build_backbone("resnet18", 8, pretrained=str(path))
    torch.save(resnet50(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="does not match a resnet18"):
        build_backbone("resnet18", 8, pretrained=str(path))


def test_weights_names_resolve_without_downloading():
    assert resolve_weights("resnet101", "IMAGENET1K_V1").name == "IMAGENET1K_V1"
    assert resolve_weights("resnet50", "DEFAULT").name == "IMAGENET1K_V2"
    assert resolve_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1").name == "IMAGENET1K_V1"
    assert resolve_weights("resnet18", "IMAGENET1K_V2") is None  # resnet18 has only V1
    assert resolve_weights("resnet18", "weights/r18.pth") is None


def test_unknown_pretrained_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a state_dict file nor.*IMAGENET1K_V1"):
        build_backbone("resnet18", 8, pretrained=str(tmp_path / "missing.pth"))


def test_imagenet_weights_that_cannot_be_downloaded_say_what_to_do(monkeypatch):
    # The network is unreachable: torchvision's own fetch raises URLError, as it does here.
    from urllib.error import URLError

    from torchvision.models import ResNet18_Weights

    def offline(self, *args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError) as caught:
        build_backbone("resnet18", 8, pretrained="imagenet")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("model.pretrained='imagenet': ")
    for part in ("ResNet18_Weights.IMAGENET1K_V1", "Name or service not known",
                 ResNet18_Weights.IMAGENET1K_V1.url, "model.pretrained=null",
                 "model.backbone=efficientnet_lite0"):
        assert part in message


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "resnet152"}, "resnet18, resnet34, resnet50, resnet101"),
    ({"output_stride": 32}, r"\(8, 16\)"),
])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(**{"name": "resnet18", "output_stride": 8, **kwargs})
