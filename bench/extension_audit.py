"""What the online extension adds, class by class, for a trained checkpoint.

Runs a checkpoint written by the service over the training split (no augmentation),
extends every image's points as training does (``extend_from_logits`` with the
checkpoint's extension settings, or ``--threshold`` / ``--window`` / ``--method``), and
tabulates per ground-truth class: the annotated points, the pixels the extension
labels, their share of all labels the point cross-entropy would see, and how many of
them are right. It answers why an extension with a high overall accuracy can still
lower mIoU: which classes it adds, and which it leaves to the points alone.

    .venv/bin/python bench/extension_audit.py --checkpoint <ray_results/<run>/checkpoint_...>
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, Subset

from pdml_ray.config import from_dict
from pdml_ray.data import build_dataset, pad_collate
from pdml_ray.extension import extend_from_logits
from pdml_ray.models import build_model
from pdml_ray.service.train.checkpoint import load_training_state

IGNORE = 255


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder of a run")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--method", default=None)
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole split")
    return parser.parse_args()


@torch.no_grad()
def main() -> None:
    args = parse_args()
    state = load_training_state(args.checkpoint)
    cfg = from_dict(state["config"])
    ext = cfg.extension
    threshold = ext.threshold if args.threshold is None else args.threshold
    window = ext.window if args.window is None else args.window
    method = ext.method if args.method is None else args.method
    train = build_dataset(cfg.data, "train", train_transform=False)
    names = list(train.classes)
    model = build_model(num_classes=train.num_classes, backbone=cfg.model.backbone,
                        output_stride=cfg.model.output_stride, head=cfg.model.head)
    model.load_state_dict(state["model"])
    model.eval()
    count = len(train) if args.max_images <= 0 else min(args.max_images, len(train))
    loader = DataLoader(Subset(train, range(count)), batch_size=8,
                        collate_fn=pad_collate)
    points = torch.zeros(train.num_classes, dtype=torch.long)
    added = torch.zeros(train.num_classes, dtype=torch.long)  # by ground-truth class
    right = torch.zeros(train.num_classes, dtype=torch.long)
    given = torch.zeros(train.num_classes, dtype=torch.long)  # by extended label
    for batch in loader:
        logits = model(batch["image"])["out"]
        labels = batch["point_labels"].long()
        extended = extend_from_logits(logits, labels, threshold=threshold, window=window,
                                      method=method)
        mask = batch["mask"].long()
        new = (extended != IGNORE) & (labels == IGNORE) & (mask != IGNORE)
        points += torch.bincount(labels[labels != IGNORE], minlength=train.num_classes)
        added += torch.bincount(mask[new], minlength=train.num_classes)
        right += torch.bincount(mask[new & (extended == mask)], minlength=train.num_classes)
        given += torch.bincount(extended[new], minlength=train.num_classes)
    total_labels = int(points.sum() + added.sum())
    print(f"{count} training images, {cfg.train.supervision} checkpoint at step {state['step']}; "
          f"extension {method}, threshold {threshold}, {window}x{window}\n")
    print("| class | points | pixels added (by true class) | labels given (by extended class) "
          "| accuracy of added | share of all labels, before -> after |")
    print("|---|---|---|---|---|---|")
    for c in range(train.num_classes):
        accuracy = f"{100 * right[c] / added[c]:.1f}%" if added[c] else "n/a"
        before = 100 * points[c] / max(int(points.sum()), 1)
        after = 100 * (points[c] + given[c]) / max(total_labels, 1)
        print(f"| {names[c]} | {int(points[c])} | {int(added[c])} | {int(given[c])} | {accuracy} "
              f"| {before:.1f}% -> {after:.1f}% |")
    overall = 100 * right.sum() / max(int(added.sum()), 1)
    print(f"| **all** | {int(points.sum())} | {int(added.sum())} | {int(given.sum())} "
          f"| {overall:.1f}% | |")


if __name__ == "__main__":
    main()
