"""Scene-parsing models: dilated ResNet backbones with a DeepLab-v2 head."""

from pdml_ray.models.aspp import ASPPv2, LinearHead
from pdml_ray.models.backbone import (BACKBONES, OUTPUT_STRIDES, build_backbone,
                                      dilated_resnet, embed_channels, load_backbone_weights,
                                      resolve_weights)
from pdml_ray.models.deeplab import (HEADS, DeepLab, ProjectionHead, build_model,
                                     parameter_groups)

__all__ = [
    "ASPPv2", "BACKBONES", "DeepLab", "HEADS", "LinearHead", "OUTPUT_STRIDES", "build_backbone",
    "build_model", "dilated_resnet", "embed_channels", "load_backbone_weights",
    "parameter_groups", "ProjectionHead", "resolve_weights",
]
