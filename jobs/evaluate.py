"""Evaluate a registered model on a dataset's validation split, with a report.

    python -m jobs.evaluate --model models:/pdml-scene-parser@champion [--config FILE]
    python -m jobs.evaluate --model models:/pdml-scene-parser/3 --tile 512 --flip \\
        --report outputs/eval-v3 --log-to-model-run

Prints mIoU, pixel accuracy and per-class IoU, and writes a report folder (default
outputs/eval-<timestamp> in the project folder): per_class_iou.md (laid out like the
paper's Table 6) and .csv, confusion_matrix.png (row-normalised) and predictions.png
(image | ground truth | prediction). Scores and report go to MLflow: a new run in the
experiment, tagged with the model URI, or with --log-to-model-run the model's own run.
``--model`` accepts models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from jobs.cli import (add_config_arguments, add_inference_arguments, add_model_argument,
                      config_from_args, inference_options, run_cli)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--report", metavar="DIR",
                        help="report folder (default: outputs/eval-<timestamp> in the project "
                        "folder)")
    parser.add_argument("--grid-images", type=int, default=6, metavar="N",
                        help="validation images in predictions.png (default: 6; 0: none)")
    destination = parser.add_mutually_exclusive_group()
    destination.add_argument("--log-to-model-run", action="store_true",
                         help="log into the run that trained the model, not a new run")
    destination.add_argument("--no-mlflow", action="store_true", help="write the report only")
    add_inference_arguments(parser)
    add_config_arguments(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)

    from pdml_ray.config import project_dir
    from pdml_ray.data.io import check_output_folder

    report = Path(args.report) if args.report else (
        project_dir(args.project_dir) / "outputs" / f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_folder(report, "--report")  # before the model is loaded and evaluated

    from pdml_ray.service.train.preflight import check_store_readable

    check_store_readable(cfg.mlflow.tracking_uri)  # seconds, not MLflow's minutes of retries

    from tqdm import tqdm

    from pdml_ray.data import build_dataset
    from pdml_ray.inference import evaluate_dataset
    from pdml_ray.reports import write_evaluation_report
    from pdml_ray.service.registry.evaluate import log_evaluation
    from pdml_ray.service.registry.load import load_scene_parser

    loaded = load_scene_parser(cfg.mlflow.tracking_uri, args.model)
    model = loaded.parser
    val_set = build_dataset(cfg.data, "val")
    if tuple(val_set.classes) != model.classes:
        raise FileNotFoundError(f"model {args.model} predicts the {len(model.classes)} classes of "
                                f"{model.cfg.data.dataset}, but dataset {cfg.data.dataset} at "
                                f"{cfg.data.root} has {len(val_set.classes)} other classes")
    options = inference_options(args)
    confusion, samples = evaluate_dataset(
        model, val_set, keep=args.grid_images,
        progress=lambda items: tqdm(items, desc="evaluating", unit="image"), **options)
    scores = confusion.compute()

    version = f" (version {loaded.version.version})" if loaded.version is not None else ""
    write_evaluation_report(report, class_names=val_set.classes, palette=model.palette,
                            confusion=confusion.mat.cpu().numpy(), scores=scores,
                            samples=samples, title=f"{args.model}{version} on {cfg.data.dataset} "
                                                   f"val ({len(val_set)} images)")
    print(f"\nmodel      {args.model}{version}")
    print(f"dataset    {cfg.data.dataset} ({len(val_set)} validation images at {cfg.data.root})")
    print(f"mIoU       {scores['miou']:.4f}")
    print(f"pixel acc  {scores['pixel_acc']:.4f}\n")
    width = max(len(name) for name in val_set.classes)
    for name, iou in zip(val_set.classes, scores["per_class_iou"]):
        shown = "  n/a (absent)" if math.isnan(iou) else f"{iou:8.4f}"
        print(f"  {name:<{width}}  {shown}")
    print(f"\nreport     {report}")
    if not args.no_mlflow:
        params = {"model_uri": args.model, "dataset": cfg.data.dataset, "data_root": cfg.data.root,
                  "val_images": len(val_set), **{f"tta.{k}": v for k, v in options.items()}}
        run_id = log_evaluation(cfg, loaded, report_dir=report, scores=scores, params=params,
                                to_model_run=args.log_to_model_run)
        print(f"MLflow run {run_id} in {cfg.mlflow.tracking_uri}")
    return 0


if __name__ == "__main__":
    run_cli(main)
