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

- a working resolution (``resolution``): a photo whose shorter side is longer than
  ``resolution`` pixels is scaled down to it (aspect kept), predicted there, and the class
  map is scaled back to the photo's size with nearest neighbour. ``jobs.predict`` uses the
  model's training crop side (:attr:`SceneParser.working_size`) by default: a 6000 x 4000
  photo at full resolution took minutes for objects far larger than any the model saw.

Memory grows with the predicted view: the averaged probabilities are ``C x h x w`` floats.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pdml_ray.config import Config, from_dict
from pdml_ray.data import SegmentationDataset, dataset_class, to_model_input
from pdml_ray.metrics import ConfusionMatrix
from pdml_ray.models import build_model

DEFAULT_OVERLAP = 1 / 3  # of the tile side, as mmsegmentation's usual 512/341 crop/stride
WINDOW_BATCH = 4  # windows per forward pass: faster than one by one, bounded memory
PROBE_SIDE = 64  # the input side at which the convolutions' shares of a pass are measured
# progress(windows done, windows in the image); within a forward pass ``done`` moves on by
# fractions of its windows as the network's convolutions run (a large photo in one window
# took minutes with nothing to show).
Progress = Callable[[float, int], None]


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


def working_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(h, w)`` of a ``height x width`` image scaled so that its shorter side is
    ``short_side`` pixels, aspect ratio kept (sides rounded); its own size when the
    shorter side is not longer than that (photos are never scaled up)."""
    shorter = min(height, width)
    if shorter <= short_side:
        return height, width
    return max(1, round(height * short_side / shorter)), max(1, round(width * short_side / shorter))


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> uint8 ``(*shape, 3)``: bilinear, with Pillow's support widened
    when shrinking (no aliasing)."""
    height, width = shape
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize_nearest(classes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Class ids ``(h, w)`` -> ``shape`` ``(H, W)`` by nearest neighbour: output pixel
    ``(i, j)`` takes the input pixel under its centre, ``((2i + 1) h // 2H, (2j + 1) w // 2W)``
    (integer arithmetic: no rounding at the cell borders)."""
    (height, width), (out_h, out_w) = classes.shape, shape
    rows = (2 * np.arange(out_h) + 1) * height // (2 * out_h)
    cols = (2 * np.arange(out_w) + 1) * width // (2 * out_w)
    return classes[rows[:, None], cols[None, :]]


def window_grid(height: int, width: int, tile: int | None, overlap: float
                ) -> list[tuple[int, int, tuple[int, int], tuple[int, int]]]:
    """``(top, left, rows owned, cols owned)`` of the windows of a ``height x width``
    view: one window (the whole view) unless it is larger than ``tile`` on a side."""
    if tile is None or (height <= tile and width <= tile):
        return [(0, 0, (0, height), (0, width))]
    tile_h, tile_w = min(tile, height), min(tile, width)
    rows, cols = window_starts(height, tile, overlap), window_starts(width, tile, overlap)
    return [(top, left, rows_owned, cols_owned)
            for top, rows_owned in zip(rows, owned_ranges(rows, tile_h, height))
            for left, cols_owned in zip(cols, owned_ranges(cols, tile_w, width))]


def conv_cost(module: nn.Conv2d, output: torch.Tensor) -> float:
    """Multiply-adds of one call of ``module`` that produced ``output``."""
    kernel_h, kernel_w = module.kernel_size
    return float(output.numel() * kernel_h * kernel_w * module.in_channels // module.groups)


@contextmanager
def conv_progress(model: nn.Module, shares: Sequence[float],
                  report: Callable[[float], None]) -> Iterator[None]:
    """Call ``report(fraction of the pass done)`` as each convolution of a forward pass of
    ``model`` finishes; ``shares`` are the convolutions' shares of a pass, in the order
    they run (:meth:`SceneParser.conv_shares`)."""
    done, calls = 0.0, 0

    def finished(module, inputs, output) -> None:
        nonlocal done, calls
        if calls < len(shares):
            done += shares[calls]
        calls += 1
        report(min(done, 1.0))

    handles = [module.register_forward_hook(finished) for module in model.modules()
               if isinstance(module, nn.Conv2d)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def view_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size of the view at ``scale`` of a ``height x width`` image."""
    if scale == 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


class SceneParser:
    """A trained model with its class names and palette.

    ``predict`` takes uint8 images ``(N, H, W, 3)`` (or one ``(H, W, 3)``) of any H, W
    and returns int64 class ids ``(N, H, W)`` (or ``(H, W)``) at the input resolution,
    predicted there or, with ``resolution``, at a working resolution and scaled back.
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
        self._conv_shares: tuple[float, ...] | None = None

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

    @property
    def working_size(self) -> int:
        """The shorter side, in pixels, that ``jobs.predict`` predicts photos at unless
        asked for full resolution: the side of the crops the model was trained on
        (``data.crop_size`` of the config recorded with it)."""
        return self.cfg.data.crop_size

    @torch.no_grad()
    def conv_shares(self) -> tuple[float, ...]:
        """Each convolution's share of the multiply-adds of one forward pass, in the order
        they run: measured once on a ``PROBE_SIDE`` square (every feature map grows with
        the input's area, so the shares hold at any size)."""
        if self._conv_shares is None:
            costs: list[float] = []
            handles = [module.register_forward_hook(
                lambda module, inputs, output: costs.append(conv_cost(module, output)))
                for module in self.model.modules() if isinstance(module, nn.Conv2d)]
            try:
                self.model(torch.zeros(1, 3, PROBE_SIDE, PROBE_SIDE, device=self.device))
            finally:
                for handle in handles:
                    handle.remove()
            total = sum(costs) or 1.0
            self._conv_shares = tuple(cost / total for cost in costs)
        return self._conv_shares

    def _forward(self, x: torch.Tensor, advance: Callable[[float], None] | None
                 ) -> torch.Tensor:
        """``self.model(x)["out"]``, calling ``advance(fraction of x's windows done)`` as
        the pass goes when ``advance`` is given."""
        if advance is None:
            return self.model(x)["out"]
        windows, reported = len(x), 0.0

        def report(fraction: float) -> None:
            nonlocal reported
            if fraction > reported:
                advance(windows * (fraction - reported))
                reported = fraction

        with conv_progress(self.model, self.conv_shares(), report):
            logits = self.model(x)["out"]
        report(1.0)
        return logits

    def _window_logits(self, x: torch.Tensor, tile: int | None, overlap: float,
                       advance: Callable[[float], None] | None = None) -> torch.Tensor:
        """Logits ``(1, C, h, w)`` of a normalised ``(1, 3, h, w)`` view, by windows when
        the view is larger than ``tile`` on either side; ``advance(n)`` as each pass
        makes progress through its windows (fractions of them within the pass)."""
        height, width = x.shape[-2:]
        windows = window_grid(height, width, tile, overlap)
        if len(windows) == 1:
            return self._forward(x, advance)
        tile_h, tile_w = min(tile, height), min(tile, width)
        out = None
        # Windows share one size, so a few go through the model together.
        for first in range(0, len(windows), WINDOW_BATCH):
            group = windows[first:first + WINDOW_BATCH]
            crops = torch.cat([x[..., top:top + tile_h, left:left + tile_w]
                               for top, left, _, _ in group])
            logits = self._forward(crops, advance)
            if out is None:
                out = logits.new_empty(1, logits.shape[1], height, width)
            for k, (top, left, (y0, y1), (x0, x1)) in enumerate(group):
                out[0, :, y0:y1, x0:x1] = logits[k, :, y0 - top:y1 - top, x0 - left:x1 - left]
        return out

    @torch.no_grad()
    def probabilities(self, image: np.ndarray, *, tile: int | None = None,
                      overlap: float = DEFAULT_OVERLAP, scales: Sequence[float] = (1.0,),
                      flip: bool = False, progress: Progress | None = None) -> torch.Tensor:
        """Softmax probabilities ``float32 (C, H, W)`` for one uint8 ``(H, W, 3)`` image,
        averaged over the views (every scale, mirrored too when ``flip``).

        Args:
            tile: window side in pixels for views larger than it; None: whole views.
            overlap: share of ``tile`` that neighbouring windows overlap, in [0, 1).
            scales: resize factors of the views (1.0 = the image as given).
            flip: also run each scale mirrored left-right (and mirror the result back).
            progress: ``progress(done, total)`` as the forward passes go, counting windows
                over all views (``total``), ``done`` moving on within each pass as its
                convolutions run: an image predicted in one window shows progress too.
        """
        check_inference_options(tile, overlap, scales)
        x = to_model_input(image).unsqueeze(0).to(self.device)
        height, width = x.shape[-2:]
        mirrors = (False, True) if flip else (False,)
        windows = len(mirrors) * sum(len(window_grid(*view_size(height, width, scale), tile,
                                                     overlap)) for scale in scales)
        done = 0.0

        def advance(count: float) -> None:
            nonlocal done
            done += count
            # the last pass ends exactly on the total, whatever the rounding on the way
            progress(min(done, windows) if abs(done - windows) > 1e-6 else windows, windows)

        total, views = None, 0
        for scale in scales:
            view = x
            if scale != 1.0:
                view = F.interpolate(x, size=view_size(height, width, scale), mode="bilinear",
                                     align_corners=False,
                                     antialias=scale < 1.0)  # no aliasing when shrinking
            for mirrored in mirrors:
                logits = self._window_logits(view.flip(-1) if mirrored else view, tile, overlap,
                                             advance if progress is not None else None)
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
                flip: bool = False, resolution: int | None = None,
                progress: Progress | None = None) -> np.ndarray:
        """Class ids ``int64 (N, H, W)`` of uint8 ``(N, H, W, 3)`` images (``(H, W)`` for
        one ``(H, W, 3)`` image); other options as in :meth:`probabilities`.

        Args:
            resolution: None: predict each image at its own resolution (exact; what
                evaluation against dense masks uses). A number of pixels: images whose
                shorter side is longer are scaled down to that shorter side
                (:func:`working_shape`, :func:`resize_image`), predicted there (tiled by
                ``tile`` if still larger), and the class map is scaled back to the image's
                size by nearest neighbour (:func:`resize_nearest`). Scales and windows
                then apply to the scaled image.
        """
        images = np.asarray(images)
        single = images.ndim == 3
        if single:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3) or (H, W, 3), got "
                             f"{images.dtype} {images.shape}")
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels (or None), got "
                             f"{resolution}")
        options = {"tile": tile, "overlap": overlap, "scales": scales, "flip": flip,
                   "progress": progress}
        preds = []
        for image in images:
            shape = image.shape[:2]
            working = shape if resolution is None else working_shape(*shape, resolution)
            if working == shape:
                preds.append(self.probabilities(image, **options).argmax(0).cpu().numpy())
                continue
            classes = self.probabilities(resize_image(image, working), **options).argmax(0)
            preds.append(resize_nearest(classes.cpu().numpy(), shape))
        preds = np.stack(preds)
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
