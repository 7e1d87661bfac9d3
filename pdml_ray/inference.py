"""Inference on user images in plain PyTorch: uint8 RGB photos in, class-id maps out.

Beyond one forward pass over the whole image, :class:`SceneParser` offers

- sliding windows (``tile``): an image larger than ``tile`` pixels on a side is cut into
  overlapping ``tile`` x ``tile`` windows, and every pixel takes its scores from the window
  whose border it is farthest from (the cut runs through the middle of each overlap).
  A pixel therefore always sees at least half the overlap of context on every side, and
  for a model whose receptive field reaches no further than that, the stitched scores
  equal those of one pass over the whole image, exactly.
- test-time augmentation: the image is also run at other ``scales`` and/or mirrored
  (``flip``); each view's logits are resized back to the input size and the softmax
  probabilities of all views are averaged.

Memory grows with the image: the averaged probabilities are ``C x H x W`` floats.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pdml_ray.config import Config, from_dict
from pdml_ray.data import SegmentationDataset, dataset_class, to_model_input
from pdml_ray.metrics import ConfusionMatrix
from pdml_ray.models import build_model

DEFAULT_OVERLAP = 1 / 3  # of the tile side, as mmsegmentation's usual 512/341 crop/stride
WINDOW_BATCH = 4  # windows per forward pass: faster than one by one, bounded memory


def check_inference_options(tile: int | None, overlap: float, scales: Sequence[float]) -> None:
    """Raise ValueError naming the option when a sliding-window or TTA option is invalid."""
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be a positive number of pixels (or None), got {tile}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap is a fraction of the tile in [0, 1), got {overlap}")
    if not scales or any(not scale > 0 for scale in scales):
        raise ValueError(f"scales must be one or more positive factors, got {tuple(scales)}")


def window_starts(length: int, tile: int, overlap: float = DEFAULT_OVERLAP) -> list[int]:
    """Offsets of the windows covering ``[0, length)`` along one axis.

    Windows are ``min(tile, length)`` long, evenly spaced from 0 to ``length - tile``, and
    consecutive windows share at least ``overlap * tile`` pixels (rounded up, at most
    ``tile - 1``: windows advance by one pixel or more).
    """
    if length <= tile:
        return [0]
    stride = max(1, tile - math.ceil(overlap * tile))
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def owned_ranges(starts: Sequence[int], tile: int, length: int) -> list[tuple[int, int]]:
    """The ``[begin, end)`` span each window contributes: consecutive windows hand over in
    the middle of their overlap, so the spans tile ``[0, length)`` without gaps."""
    cuts = [(a + b + tile) // 2 for a, b in zip(starts[:-1], starts[1:])]
    return list(zip([0, *cuts], [*cuts, length]))


class SceneParser:
    """A trained model with its class names and palette.

    ``predict`` takes uint8 images ``(N, H, W, 3)`` (or one ``(H, W, 3)``) of any H, W
    and returns int64 class ids ``(N, H, W)`` (or ``(H, W)``) at the input resolution.
    The model is any module whose ``forward(x (B, 3, H, W))`` returns
    ``{"out": logits (B, C, H, W)}``.
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
        # Inference reads the classifier alone: a projection head trained for PDML is
        # not built, and its weights, if the state_dict carries them, are left out.
        model = build_model(num_classes=num_classes, backbone=cfg.model.backbone,
                            output_stride=cfg.model.output_stride, head=cfg.model.head)
        model.load_state_dict({key: value for key, value in state_dict.items()
                               if not key.startswith("projection.")})
        return cls(model, cfg, device=device)

    def _window_logits(self, x: torch.Tensor, tile: int | None, overlap: float) -> torch.Tensor:
        """Logits ``(1, C, h, w)`` of a normalised ``(1, 3, h, w)`` view, by windows when
        the view is larger than ``tile`` on either side."""
        height, width = x.shape[-2:]
        if tile is None or (height <= tile and width <= tile):
            return self.model(x)["out"]
        tile_h, tile_w = min(tile, height), min(tile, width)
        rows, cols = window_starts(height, tile, overlap), window_starts(width, tile, overlap)
        windows = [(top, left, rows_owned, cols_owned)
                   for top, rows_owned in zip(rows, owned_ranges(rows, tile_h, height))
                   for left, cols_owned in zip(cols, owned_ranges(cols, tile_w, width))]
        out = None
        # Windows share one size, so a few go through the model together.
        for first in range(0, len(windows), WINDOW_BATCH):
            group = windows[first:first + WINDOW_BATCH]
            crops = torch.cat([x[..., top:top + tile_h, left:left + tile_w]
                               for top, left, _, _ in group])
            logits = self.model(crops)["out"]
            if out is None:
                out = logits.new_empty(1, logits.shape[1], height, width)
            for k, (top, left, (y0, y1), (x0, x1)) in enumerate(group):
                out[0, :, y0:y1, x0:x1] = logits[k, :, y0 - top:y1 - top, x0 - left:x1 - left]
        return out

    @torch.no_grad()
    def probabilities(self, image: np.ndarray, *, tile: int | None = None,
                      overlap: float = DEFAULT_OVERLAP, scales: Sequence[float] = (1.0,),
                      flip: bool = False) -> torch.Tensor:
        """Softmax probabilities ``float32 (C, H, W)`` for one uint8 ``(H, W, 3)`` image,
        averaged over the views (every scale, mirrored too when ``flip``).

        Args:
            tile: window side in pixels for views larger than it; None: whole views.
            overlap: share of ``tile`` that neighbouring windows overlap, in [0, 1).
            scales: resize factors of the views (1.0 = the image as given).
            flip: also run each scale mirrored left-right (and mirror the result back).
        """
        check_inference_options(tile, overlap, scales)
        x = to_model_input(image).unsqueeze(0).to(self.device)
        height, width = x.shape[-2:]
        total, views = None, 0
        for scale in scales:
            view = x
            if scale != 1.0:
                size = (max(1, round(height * scale)), max(1, round(width * scale)))
                view = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                     antialias=scale < 1.0)  # no aliasing when shrinking
            for mirrored in ((False, True) if flip else (False,)):
                logits = self._window_logits(view.flip(-1) if mirrored else view, tile, overlap)
                if mirrored:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != (height, width):
                    logits = F.interpolate(logits, size=(height, width), mode="bilinear",
                                           align_corners=False)
                probs = logits.float().softmax(dim=1)
                total = probs if total is None else total.add_(probs)
                views += 1
        return total[0].div_(views)

    def predict(self, images: np.ndarray, *, tile: int | None = None,
                overlap: float = DEFAULT_OVERLAP, scales: Sequence[float] = (1.0,),
                flip: bool = False) -> np.ndarray:
        """Class ids ``int64 (N, H, W)`` of uint8 ``(N, H, W, 3)`` images (``(H, W)`` for
        one ``(H, W, 3)`` image); options as in :meth:`probabilities`."""
        images = np.asarray(images)
        single = images.ndim == 3
        if single:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3) or (H, W, 3), got "
                             f"{images.dtype} {images.shape}")
        options = {"tile": tile, "overlap": overlap, "scales": scales, "flip": flip}
        preds = np.stack([self.probabilities(image, **options).argmax(0).cpu().numpy()
                          for image in images])
        return preds[0] if single else preds


def evaluate_dataset(parser: SceneParser, dataset: SegmentationDataset, *, keep: int = 0,
                     progress: Callable[[Iterable[int]], Iterable[int]] = iter,
                     tile: int | None = None, overlap: float = DEFAULT_OVERLAP,
                     scales: Sequence[float] = (1.0,), flip: bool = False
                     ) -> tuple[ConfusionMatrix, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Predict every image of a dataset split at its own size and count the confusions.

    Images go one by one through :meth:`SceneParser.predict` (no padding into batches,
    which would change what the network sees at the borders), with the same options.

    Returns:
        The confusion matrix over all non-ignored pixels, and the first ``keep``
        ``(image uint8 (H, W, 3), truth (H, W), prediction (H, W))`` triples for a report.
    """
    confusion = ConfusionMatrix(len(parser.classes), ignore_index=dataset.ignore_index)
    samples = []
    for index in progress(range(len(dataset))):
        image, truth = dataset.load_pair(index)
        prediction = parser.predict(image, tile=tile, overlap=overlap, scales=scales, flip=flip)
        confusion.update(torch.from_numpy(prediction), torch.from_numpy(truth))
        if len(samples) < keep:
            samples.append((image, truth, prediction))
    return confusion, samples
