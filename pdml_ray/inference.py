"""Inference on user images in plain PyTorch: uint8 RGB photos in, class-id maps out."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from pdml_ray.config import Config, from_dict
from pdml_ray.data import dataset_class, to_model_input
from pdml_ray.models import build_model


class SceneParser:
    """A trained model with its class names and palette.

    ``predict`` takes uint8 images ``(N, H, W, 3)`` (or one ``(H, W, 3)``) of any H, W
    and returns int64 class ids ``(N, H, W)`` at the input resolution.
    """

    def __init__(self, model: nn.Module, cfg: Config, *, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        dataset = dataset_class(cfg.data.dataset)
        self.classes: tuple[str, ...] = tuple(dataset.classes)
        self.palette: tuple[tuple[int, int, int], ...] = tuple(map(tuple, dataset.palette))

    @classmethod
    def from_state(cls, state_dict: Mapping[str, torch.Tensor], config: Mapping,
                   *, device: str | torch.device = "cpu") -> SceneParser:
        cfg = from_dict(config)
        num_classes = len(dataset_class(cfg.data.dataset).classes)
        model = build_model(num_classes=num_classes, backbone=cfg.model.backbone,
                            output_stride=cfg.model.output_stride, head=cfg.model.head)
        model.load_state_dict(state_dict)
        return cls(model, cfg, device=device)

    @torch.no_grad()
    def logits(self, image: np.ndarray) -> torch.Tensor:
        """Class scores ``(C, H, W)`` for one uint8 ``(H, W, 3)`` image."""
        x = to_model_input(image).unsqueeze(0).to(self.device)
        return self.model(x)["out"][0]

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        single = images.ndim == 3
        if single:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3) or (H, W, 3), got "
                             f"{images.dtype} {images.shape}")
        preds = np.stack([self.logits(image).argmax(0).cpu().numpy() for image in images])
        return preds[0] if single else preds
