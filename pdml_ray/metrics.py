"""Segmentation metrics from a confusion matrix, reducible across processes."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from pdml_ray.labels import IGNORE_INDEX


class ConfusionMatrix:
    """Counts of (true class, predicted class) over every non-ignored pixel seen.

    ``mat[t, p]`` is the number of pixels of true class t predicted as p. :meth:`update`
    adds a batch; :meth:`compute` turns the counts into mIoU and pixel accuracy, summed
    over all processes when ``torch.distributed`` is initialised (every rank must then
    call it: it is a collective). The local counts are never modified by the reduction,
    so ``compute`` can be called any number of times.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add predicted and true class ids of the same shape (any shape); pixels whose
        target is ``ignore_index`` are skipped."""
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs "
                             f"{tuple(target.shape)}")
        n = self.num_classes
        keep = target != self.ignore_index
        pred, target = pred[keep].long(), target[keep].long()
        for name, values in (("target", target), ("pred", pred)):
            if values.numel() and bool(((values < 0) | (values >= n)).any()):
                raise ValueError(f"{name} holds class ids outside [0, {n}) "
                                 f"(and not ignore_index={self.ignore_index})")
        if self.mat.device != target.device:
            self.mat = self.mat.to(target.device)
        self.mat += torch.bincount(target * n + pred, minlength=n * n).view(n, n)

    def reset(self) -> None:
        self.mat.zero_()

    def reduce_from_all_processes(self) -> torch.Tensor:
        """The counts summed over all processes (a copy; this process's own counts stay).

        Without an initialised process group, a copy of the local counts.
        """
        total = self.mat.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        return total

    def compute(self) -> dict[str, float | list[float]]:
        """``{"miou", "pixel_acc", "per_class_iou"}`` over all processes' pixels.

        Per-class IoU is ``tp / (tp + fp + fn)``, NaN for a class absent from both targets
        and predictions (union 0); mIoU averages the classes with a non-empty union.
        Pixel accuracy is correct pixels over non-ignored pixels. Both are NaN before
        any pixel is seen.
        """
        mat = self.reduce_from_all_processes().double()
        correct = mat.diag()
        union = mat.sum(0) + mat.sum(1) - correct
        iou = torch.where(union > 0, correct / union.clamp(min=1), torch.full_like(union, math.nan))
        seen = union > 0
        miou = float(iou[seen].mean()) if bool(seen.any()) else math.nan
        total = float(mat.sum())
        pixel_acc = float(correct.sum()) / total if total else math.nan
        return {"miou": miou, "pixel_acc": pixel_acc, "per_class_iou": iou.tolist()}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_classes={self.num_classes}, "
                f"pixels={int(self.mat.sum())})")
