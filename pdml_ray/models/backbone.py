"""Dilated (atrous) ResNet backbones from torchvision, and their ImageNet weights.

The paper's feature extractor is DeepLab's ResNet-101 with atrous convolution: the last
stages keep their resolution and dilate their 3x3 convolutions instead of striding, so
the feature map is 1/8 of the input (output stride 8) while the receptive field grows
as if the strides were there.

Dilation convention (torchvision's, applied to every depth): a stage that stops striding
gets dilation ``2`` (layer3 at output stride 8) or ``2 x`` the previous stage's
(layer4: 4 at OS 8, 2 at OS 16). The first 3x3 convolution of such a stage, the one
that used to stride, keeps the previous stage's dilation; every later 3x3 uses the new
one. Padding equals dilation, so a stride-1 3x3 convolution preserves the map size and
the feature map is ``ceil(H / output_stride) x ceil(W / output_stride)``.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model_weights, resnet
from torchvision.models._utils import IntermediateLayerGetter

from pdml_ray.config import Backbone, OutputStride
from pdml_ray.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pdml_ray.models.efficientnet import LITE0, LITE0_CHANNELS, lite0_backbone

BACKBONES = typing.get_args(Backbone)
OUTPUT_STRIDES = typing.get_args(OutputStride)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
_BUILDERS = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
}


def check_backbone_args(name: str, output_stride: int) -> None:
    """Raise ValueError unless ``name`` and ``output_stride`` are supported."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")


def embed_channels(name: str) -> int:
    """Channels D of the backbone's feature map: 512 for resnet18/34, 2048 for
    resnet50/101, 320 for efficientnet_lite0."""
    check_backbone_args(name, 8)
    if name == LITE0:
        return LITE0_CHANNELS
    return 512 if name in ("resnet18", "resnet34") else 2048


def _dilate_basic_stage(stage: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turn a strided stage of BasicBlocks into a stride-1 stage with atrous 3x3 convs.

    torchvision's BasicBlock refuses ``dilation > 1`` at construction, so the modules are
    edited in place; parameter shapes do not change, so ImageNet weights still load.
    """
    for index, block in enumerate(stage):
        first_dilation = previous_dilation if index == 0 else dilation
        block.conv1.stride = (1, 1)
        block.conv1.dilation = block.conv1.padding = (first_dilation, first_dilation)
        block.conv2.dilation = block.conv2.padding = (dilation, dilation)
        block.stride = 1
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def dilated_resnet(name: str, output_stride: int = 8) -> resnet.ResNet:
    """A randomly initialised torchvision ResNet whose last stages use atrous convolution.

    Output stride 8 dilates layer3 (2) and layer4 (4); output stride 16 dilates layer4 (2).
    """
    check_backbone_args(name, output_stride)
    dilate = [False, output_stride == 8, True]
    if name in ("resnet50", "resnet101"):
        return _BUILDERS[name](weights=None, replace_stride_with_dilation=dilate)
    model = _BUILDERS[name](weights=None)
    dilation = 1
    for stage, stage_dilates in zip((model.layer2, model.layer3, model.layer4), dilate):
        if stage_dilates:
            _dilate_basic_stage(stage, dilation, dilation * 2)
            dilation *= 2
    return model


def resolve_weights(name: str, weights_name: str) -> WeightsEnum | None:
    """The torchvision weights enum member ``weights_name`` names for backbone ``name``.

    Accepts a member name (``"IMAGENET1K_V1"``), ``"DEFAULT"`` or the qualified form
    (``"ResNet101_Weights.IMAGENET1K_V2"``); returns None when it names none of them.
    Nothing is downloaded here. ``"imagenet"`` names torchvision's IMAGENET1K_V1.
    """
    check_backbone_args(name, 8)
    if name not in RESNETS:
        return None
    if weights_name == "imagenet":
        weights_name = "IMAGENET1K_V1"
    enum = get_model_weights(name)
    prefix = f"{enum.__name__}."
    member = weights_name[len(prefix):] if weights_name.startswith(prefix) else weights_name
    if member == "DEFAULT":
        return enum.DEFAULT
    return enum.__members__.get(member)


def _read_state_dict(name: str, pretrained: str) -> Mapping[str, torch.Tensor]:
    weights = resolve_weights(name, pretrained)
    if weights is not None:
        # Downloads into TORCH_HOME on first use: only on a machine with internet access.
        try:
            return weights.get_state_dict(progress=True, check_hash=True)
        except URLError as exc:  # offline: say what to do instead of a urllib traceback
            raise RuntimeError(
                f"model.pretrained={pretrained!r}: torchvision's {name} "
                f"{type(weights).__name__}.{weights.name} weights are not in "
                f"{torch.hub.get_dir()}/checkpoints and cannot be downloaded here "
                f"({exc.reason}); copy the file there ({weights.url}), give "
                f"model.pretrained a state_dict path, use model.pretrained=null for random "
                f"init, or model.backbone={LITE0}, whose ImageNet weights ship with the "
                f"package") from None
    path = Path(os.path.expanduser(pretrained))
    if not path.is_file():
        known = ", ".join(["DEFAULT", *get_model_weights(name).__members__])
        raise FileNotFoundError(f"pretrained={pretrained!r} is neither a state_dict file nor a "
                                f"torchvision weights name for {name} ({known})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path}: expected a ResNet state_dict (a mapping of parameter names "
                         f"to tensors), got {type(state).__name__}")
    return state


def load_backbone_weights(backbone: nn.Module, name: str, pretrained: str) -> None:
    """Load ImageNet ResNet weights into ``backbone``, checking every key.

    ``pretrained`` is a path to a state_dict file saved from a torchvision ResNet of the
    same depth, or a torchvision weights name (see :func:`resolve_weights`). The
    classifier keys ``fc.*`` are dropped; any other missing or unexpected key raises
    ValueError listing them, rather than leaving layers silently at random init.
    """
    state = {k: v for k, v in _read_state_dict(name, pretrained).items()
             if not k.startswith("fc.")}
    expected = set(backbone.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        raise ValueError(f"pretrained={pretrained!r} does not match a {name} backbone: "
                         f"missing keys [{show(missing)}], unexpected keys [{show(unexpected)}]")
    backbone.load_state_dict(state, strict=True)


def build_backbone(name: str = "resnet101", output_stride: int = 8,
                   pretrained: str | None = None) -> nn.Module:
    """The dilated backbone as a module returning ``{"out": (B, D, h, w)}``.

    ``h = ceil(H / output_stride)``, ``w = ceil(W / output_stride)``; D is
    :func:`embed_channels` of ``name``. A ResNet is its stem..layer4 (the pooling and fc
    layers are dropped); efficientnet_lite0 its stem and blocks
    (:mod:`pdml_ray.models.efficientnet`). ``pretrained="imagenet"`` is each backbone's
    ImageNet weights: Lite0's ship with the project; the ResNets' are torchvision's,
    downloaded on first use by a machine with internet access.
    """
    check_backbone_args(name, output_stride)
    if name == LITE0:
        return lite0_backbone(output_stride, pretrained, mean_in=IMAGENET_MEAN,
                              std_in=IMAGENET_STD)
    backbone = IntermediateLayerGetter(dilated_resnet(name, output_stride),
                                       return_layers={"layer4": "out"})
    if pretrained is not None:
        load_backbone_weights(backbone, name, pretrained)
    return backbone
