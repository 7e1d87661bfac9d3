"""DeepLab-v2 classification heads: ASPP (the paper's) and a 1x1 linear baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ASPP_RATES = (6, 12, 18, 24)  # DeepLab-v2's ASPP-L


class ASPPv2(nn.Module):
    """Atrous spatial pyramid pooling as in DeepLab-v2.

    Parallel 3x3 convolutions with dilations ``rates`` map the features ``(B, D, h, w)``
    straight to class scores ``(B, num_classes, h, w)``; the branch outputs are summed.
    Unlike DeepLab-v3's ASPP there is no 1x1 branch, image pooling or batch norm.
    Weights start at N(0, 0.01) and biases at 0, as in DeepLab-v2.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = ASPP_RATES):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=rate, dilation=rate)
            for rate in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scores = self.branches[0](features)
        for branch in self.branches[1:]:
            scores = scores + branch(features)
        return scores


class LinearHead(nn.Conv2d):
    """A 1x1 convolution from the features to class scores: a cheap baseline head."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.weight, std=0.01)
        nn.init.zeros_(self.bias)
