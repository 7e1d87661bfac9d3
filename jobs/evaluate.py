"""Evaluate a registered model on a dataset's validation split.

    python -m jobs.evaluate --model models:/pdml-scene-parser@champion [--config FILE]

Prints mIoU, pixel accuracy and per-class IoU. ``--model`` accepts any MLflow model
URI: models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model.
"""

from __future__ import annotations

import argparse
import math

from jobs.cli import add_config_arguments, config_from_args, run_cli


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/pdml-scene-parser@champion",
                        help="MLflow model URI (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4)
    add_config_arguments(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)

    import mlflow
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from pdml_ray.data import build_dataset, pad_collate
    from pdml_ray.engine import evaluate

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(args.model)
    except mlflow.exceptions.MlflowException as exc:
        raise FileNotFoundError(f"model {args.model} not found in {cfg.mlflow.tracking_uri}: "
                                f"{exc.message}") from None
    parser_ = model.unwrap_python_model().parser
    val_set = build_dataset(cfg.data, "val")
    if len(val_set.classes) != len(parser_.classes):
        raise FileNotFoundError(f"model {args.model} predicts {len(parser_.classes)} classes but "
                                f"dataset {cfg.data.dataset} at {cfg.data.root} has "
                                f"{len(val_set.classes)}")
    loader = DataLoader(val_set, batch_size=args.batch_size, collate_fn=pad_collate)
    scores = evaluate(parser_.model, tqdm(loader, desc="evaluating", unit="batch"),
                      num_classes=len(val_set.classes), device=parser_.device)
    print(f"\nmodel      {args.model}")
    print(f"dataset    {cfg.data.dataset} ({len(val_set)} validation images at {cfg.data.root})")
    print(f"mIoU       {scores['miou']:.4f}")
    print(f"pixel acc  {scores['pixel_acc']:.4f}\n")
    width = max(len(name) for name in val_set.classes)
    for name, iou in zip(val_set.classes, scores["per_class_iou"]):
        shown = "  n/a (absent)" if math.isnan(iou) else f"{iou:8.4f}"
        print(f"  {name:<{width}}  {shown}")
    return 0


if __name__ == "__main__":
    run_cli(main)
