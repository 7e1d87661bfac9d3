"""Where to click next: rank the pixels of a split's images by how much a click there is
likely to help, and spread a click budget over them.

    python -m jobs.suggest --model models:/pdml-scene-parser@champion \\
        --dataset synthetic --root data/synthetic --split train \\
        --points data/synthetic/points_train.parquet --budget 200 --out suggestions.csv \\
        [--overlays suggestions/] [--format csv|label-studio]

A pixel's score is the model's uncertainty (top-2 margin or entropy) mixed with how far
its embedding lies from every labelled point of its predicted class, less near existing
clicks. Each predicted region gets one suggestion before any gets a second, and an image
takes more than its share only when the others have nothing left. Scoring runs as Ray
Data batch inference, one model per actor (a local Ray is started when no cluster is
given). CSV columns: image_id,y,x,suggested_class,score (the class is a hint, never
imported as a label); --format label-studio writes tasks with the suggestions as
pre-annotations, and the project's labelling config beside them. Each round is an MLflow
run (experiment --experiment). Label the points, then import them with
``python -m jobs.prepare_points --import FILE`` and train again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.cli import (add_config_arguments, add_model_argument, config_from_args, positive_int,
                      run_cli)


def main() -> int:
    from pdml_ray.data import DATASETS
    from pdml_ray.labelling.scoring import STRATEGIES

    parser = argparse.ArgumentParser(prog="python -m jobs.suggest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--root", required=True, help="the dataset folder (its released layout)")
    parser.add_argument("--split", default="train", choices=("train", "val"))
    parser.add_argument("--points", default=None,
                        help="the split's existing clicks (Parquet from prepare_points); "
                        "without it every class counts as unlabelled")
    parser.add_argument("--budget", required=True, type=positive_int,
                        help="how many clicks to suggest")
    parser.add_argument("--out", required=True,
                        help="the suggestions file (CSV, or Label Studio tasks JSON)")
    parser.add_argument("--format", default="csv", choices=("csv", "label-studio"))
    parser.add_argument("--overlays", default=None, metavar="DIR",
                        help="write one picture per image with its suggestions numbered")
    parser.add_argument("--strategy", default="margin+coverage", choices=STRATEGIES,
                        help="uncertainty measure, with or without embedding coverage "
                        "(default: %(default)s)")
    parser.add_argument("--actors", type=positive_int, default=None,
                        help="models scoring at once (default: one per CPU of the cluster, "
                        "one per GPU with ray.use_gpu)")
    parser.add_argument("--batch-size", type=positive_int, default=4,
                        help="images per Ray Data batch (default: 4)")
    parser.add_argument("--images-from", default=None, metavar="URI",
                        help="read the image files from this folder instead (s3://, gs://, "
                        "or a path): a cluster's actors read object storage directly")
    parser.add_argument("--image-url-prefix", default=None,
                        help="label-studio: data.image = this prefix + file name (default: "
                        "a local-files URL relative to --root; start Label Studio with "
                        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<root>)")
    parser.add_argument("--max-images", type=positive_int, default=None, metavar="N",
                        help="score only the first N images of the split (default: all)")
    parser.add_argument("--experiment", default="pdml-suggestions",
                        help="MLflow experiment of the round (default: %(default)s)")
    add_config_arguments(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)

    from tqdm import tqdm

    from pdml_ray.labelling.scoring import ScoringSettings
    from pdml_ray.service.infer.round import SuggestRequest, suggest_round

    request = SuggestRequest(
        model_uri=args.model, dataset=args.dataset, root=Path(args.root), split=args.split,
        points=Path(args.points) if args.points else None, budget=args.budget,
        out=Path(args.out), tracking_uri=cfg.mlflow.tracking_uri,
        settings=ScoringSettings(strategy=args.strategy), format=args.format,
        overlays=Path(args.overlays) if args.overlays else None, actors=args.actors,
        use_gpu=cfg.ray.use_gpu, batch_size=args.batch_size, images_from=args.images_from,
        image_url_prefix=args.image_url_prefix, max_images=args.max_images or 0,
        experiment=args.experiment, artifact_location=cfg.mlflow.artifact_location,
        ray_address=cfg.ray.address)
    with tqdm(desc="scoring", unit="image") as bar:
        result = suggest_round(request, progress=bar.update, say=bar.write)
    images = len({s.image_id for s in result.suggestions})
    print(f"{len(result.suggestions)} suggestions in {images} images -> "
          f"{', '.join(str(path) for path in result.files)}")
    if request.overlays is not None:
        print(f"overlays -> {request.overlays}/<image>_suggestions.png")
    print(f"scored {result.scored.images} images at {result.scored.images_per_second:.2f} "
          f"images/s; MLflow run {result.run_id} (experiment {request.experiment})")
    return 0


if __name__ == "__main__":
    run_cli(main)
