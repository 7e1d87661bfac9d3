"""The scene parser: a dilated ResNet backbone plus a classifier head, in two streams.

The backbone's feature map feeds both the classifier (pixel-wise prediction) and the
point-based distance metric learning (the paper's Figure 1), so ``forward`` returns both.
"""

from __future__ import annotations

import typing
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pdml_ray.config import Head
from pdml_ray.models.aspp import ASPPv2, LinearHead
from pdml_ray.models.backbone import build_backbone, check_backbone_args, embed_channels

HEADS = typing.get_args(Head)


class ProjectionHead(nn.Module):
    """1x1 conv -> ReLU -> 1x1 conv, L2-normalised and scaled to ``radius``: an embedding
    apart from the classifier's features, as later point-supervised work uses.

    Normalised embeddings cannot collapse towards the origin the way ReLU features under
    a strong pull term do; on a sphere of radius r two random directions in many
    dimensions lie about r * sqrt(2) apart, so r = 16 keeps the paper's margin of 20
    meaningful (distances 0 to 32).
    """

    def __init__(self, in_channels: int, dim: int = 128, radius: float = 16.0):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(inplace=True),
                                    nn.Conv2d(in_channels, dim, 1))
        self.radius = radius

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(features), dim=1) * self.radius


class DeepLab(nn.Module):
    """``backbone`` (returns ``{"out": features}``) followed by a ``classifier``.

    ``forward(x)`` with ``x (B, 3, H, W)`` returns a dict of plain tensors:
    ``"out"`` logits ``(B, num_classes, H, W)``, bilinearly upsampled to the input size;
    ``"embed"`` ``(B, D, h, w)``, what PDML acts on: the backbone features the classifier
    read (the paper), or their ``projection`` when the model has one.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module,
                 projection: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.projection = projection

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)["out"]
        logits = self.classifier(features)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        embed = features if self.projection is None else self.projection(features)
        return {"out": logits, "embed": embed}


def build_model(*, num_classes: int, backbone: str = "resnet101", output_stride: int = 8,
                head: str = "aspp", pretrained: str | None = None, projection_dim: int = 0,
                projection_radius: float = 16.0) -> DeepLab:
    """The paper's DeepLab-v2 style model (defaults: ResNet-101, output stride 8, ASPP).

    Args:
        num_classes: classes C the classifier scores.
        backbone: one of resnet18, resnet34 (D = 512), resnet50, resnet101 (D = 2048).
        output_stride: 8 or 16, the input-to-feature-map ratio.
        head: "aspp" (DeepLab-v2 ASPP, as in the paper) or "linear" (a 1x1 conv).
        pretrained: None for random init; a path to an ImageNet ResNet state_dict file;
            or a torchvision weights name ("IMAGENET1K_V1", "DEFAULT"), downloaded by
            torchvision on first use. Only the backbone is initialised from it.
        projection_dim: 0 (the paper): ``embed`` is the backbone features; > 0: a
            :class:`ProjectionHead` of this many channels, normalised to
            ``projection_radius``, gives ``embed``.

    Raises:
        ValueError: unknown backbone or head, output stride outside {8, 16},
            num_classes < 1, or a state_dict whose keys do not match the backbone.
        FileNotFoundError: ``pretrained`` is neither a file nor a weights name.
    """
    check_backbone_args(backbone, output_stride)
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    features = build_backbone(backbone, output_stride, pretrained)
    channels = embed_channels(backbone)
    classifier = (ASPPv2(channels, num_classes) if head == "aspp"
                  else LinearHead(channels, num_classes))
    if projection_dim < 0:
        raise ValueError(f"projection_dim must be >= 0, got {projection_dim}")
    projection = None
    if projection_dim:
        # Initialised from a fork of the random state, which it leaves as it found it:
        # with or without the head, a seed then draws the same augmentations and
        # everything after, so a paired comparison of point CE and PDML measures the
        # loss and not a different random stream (which alone moved val mIoU by 3 points).
        with torch.random.fork_rng(devices=[]):
            projection = ProjectionHead(channels, projection_dim, projection_radius)
    return DeepLab(features, classifier, projection)


def parameter_groups(model: nn.Module, *, lr: float, head_lr_mult: float = 10.0,
                     weight_decay: float = 5e-4) -> list[dict[str, Any]]:
    """Optimizer parameter groups: backbone at ``lr``, classifier at ``lr * head_lr_mult``.

    The paper trains the classification module at ten times the feature extractor's rate;
    a projection head, when the model has one, trains at the classifier's rate.
    Each group carries ``"lr_mult"`` so a schedule can set ``lr = base * lr_mult``, and a
    ``"name"``. Frozen parameters (``requires_grad=False``) are left out.

    Raises:
        ValueError: the model has trainable parameters outside ``backbone`` and
            ``classifier`` (they would silently not be trained).
    """
    groups = []
    seen: set[int] = set()
    for name, lr_mult in (("backbone", 1.0), ("classifier", head_lr_mult),
                          ("projection", head_lr_mult)):
        module = getattr(model, name, None)
        if module is None:
            continue
        params = [p for p in module.parameters() if p.requires_grad]
        seen.update(id(p) for p in params)
        groups.append({"name": name, "params": params, "lr": lr * lr_mult, "lr_mult": lr_mult,
                       "weight_decay": weight_decay})
    others = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if others:
        raise ValueError(f"parameters outside backbone, classifier and projection: {', '.join(others[:8])}")
    return groups
