"""How unsure a model is at each pixel, from its logits: 0 = certain, 1 = as unsure as
the measure can be."""

from __future__ import annotations

import math
from typing import Callable

import torch

Uncertainty = Callable[[torch.Tensor], torch.Tensor]


def margin_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """``1 - (p1 - p2)`` per pixel, p1 and p2 the two largest softmax probabilities.

    Args:
        logits: ``(C, H, W)`` class scores of one image.

    Returns:
        ``float32 (H, W)`` in [0, 1]: 1 where the two best classes tie, 0 where one class
        takes all the probability. With a single class, 0 everywhere.
    """
    probs = logits.float().softmax(dim=0)
    if probs.shape[0] < 2:
        return torch.zeros(probs.shape[1:])
    top2 = probs.topk(2, dim=0).values
    return 1.0 - (top2[0] - top2[1])


def entropy_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy per pixel divided by ``log C`` (its largest possible value).

    Args:
        logits: ``(C, H, W)`` class scores of one image.

    Returns:
        ``float32 (H, W)`` in [0, 1]: 1 for the uniform distribution, 0 for a one-hot one.
        With a single class, 0 everywhere.
    """
    num_classes = logits.shape[0]
    if num_classes < 2:
        return torch.zeros(logits.shape[1:])
    log_probs = logits.float().log_softmax(dim=0)
    entropy = -(log_probs.exp() * log_probs).sum(dim=0)
    return (entropy / math.log(num_classes)).clamp_(0.0, 1.0)


UNCERTAINTIES: dict[str, Uncertainty] = {"margin": margin_uncertainty,
                                         "entropy": entropy_uncertainty}
