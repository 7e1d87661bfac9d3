"""Run a registered model on your own images: class-id PNGs and overlays.

    python -m jobs.predict --model models:/pdml-scene-parser@champion \\
        --input photos/ more/street.jpg --out predictions/
    python -m jobs.predict --input big.jpg --out out/ --tile 512 --scales 0.75,1,1.25 --flip

Photos are predicted at the model's working resolution: scaled so that their shorter side
is the side of its training crops, then the class map is scaled back to the photo's size
(--full-resolution: predict every pixel as given, minutes per large photo on CPU).

For each image ``NAME.ext``: ``NAME_classes.png`` (palette PNG, pixel value = class id)
and ``NAME_overlay.png`` (the photo under the coloured classes, with a legend). Any size,
RGB, grey, RGBA or palette images. More than ``--local-below`` images go through Ray
Data batch inference, one model per actor (a local Ray is started when no cluster is
given); the files are read on this machine and the outputs written here, so the
cluster's other nodes need neither folder. An unreadable file is reported and skipped;
the exit code is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from jobs.cli import (add_config_arguments, add_inference_arguments, add_model_argument,
                      config_from_args, inference_options, positive_int, run_cli)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="image files and/or folders of images")
    parser.add_argument("--out", required=True, help="folder for the output PNGs")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="opacity of the class colours in the overlay (default: 0.5)")
    parser.add_argument("--local-below", type=int, default=8, metavar="N",
                        help="predict up to N images in this process, more on Ray Data "
                        "(default: 8)")
    parser.add_argument("--actors", type=positive_int, default=None,
                        help="models predicting at once on Ray Data (default: one per CPU "
                        "of the cluster, one per GPU with ray.use_gpu)")
    parser.add_argument("--batch-size", type=positive_int, default=4,
                        help="images per Ray Data batch (default: 4)")
    parser.add_argument("--full-resolution", action="store_true",
                        help="predict at the photo's own resolution instead of scaling its "
                        "shorter side to the model's training crop side (--tile, --scales "
                        "and --flip apply to the predicted view either way)")
    add_inference_arguments(parser)
    add_config_arguments(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)

    from pdml_ray.data.io import check_output_folder

    out_dir = check_output_folder(args.out, "--out")  # before Ray, MLflow and the model

    from pdml_ray.service.train.preflight import check_store_readable

    check_store_readable(cfg.mlflow.tracking_uri)  # seconds, not MLflow's minutes of retries

    from tqdm import tqdm

    from pdml_ray.service.predict import TileBar, collect_inputs, predict_local
    from pdml_ray.service.registry.load import load_scene_parser
    from pdml_ray.service.runtime import ray_session

    sources = collect_inputs(args.input, out_dir=out_dir)
    loaded = load_scene_parser(cfg.mlflow.tracking_uri, args.model)
    print(f"model {args.model}"
          + (f" (version {loaded.version.version})" if loaded.version is not None else "")
          + f": {len(loaded.parser.classes)} classes of {loaded.parser.cfg.data.dataset}")
    options = {**inference_options(args), "resolution": (None if args.full_resolution
                                                         else loaded.parser.working_size)}
    max_pixels = cfg.data.max_image_pixels
    if len(sources) <= args.local_below:
        session = contextlib.nullcontext()
        results = predict_local(loaded.parser, sources, out_dir, alpha=args.alpha,
                                options=options, max_pixels=max_pixels,
                                progress=TileBar(position=1))
    else:
        session = ray_session(cfg.ray.address)
        # A generator: it touches Ray only once iterated, inside the session.
        results = _on_ray_data(loaded.parser, sources, out_dir, args, options, max_pixels,
                               use_gpu=cfg.ray.use_gpu)
    failed = []
    with session, tqdm(total=len(sources), desc="predicting", unit="image") as bar:
        for outcomes in results:
            for outcome in outcomes:
                if outcome.error:
                    failed.append(outcome.source)
                    bar.write(f"error: {outcome.source}: {outcome.error}", file=sys.stderr)
            bar.update(len(outcomes))
    done = len(sources) - len(failed)
    print(f"{done} of {len(sources)} images -> {out_dir}/<name>_classes.png and "
          f"<name>_overlay.png")
    if failed:
        print(f"{len(failed)} failed: {', '.join(str(path) for path in failed)}", file=sys.stderr)
        return 1
    return 0


def _on_ray_data(parser, sources, out_dir, args, options, max_pixels, *, use_gpu: bool):
    from pdml_ray.service.infer.actor_pool import default_actors
    from pdml_ray.service.infer.predict import predict_on_ray_data

    actors = args.actors or default_actors(use_gpu)
    yield from predict_on_ray_data(parser, sources, out_dir, actors=actors,
                                   batch_size=args.batch_size, alpha=args.alpha,
                                   options=options, max_pixels=max_pixels,
                                   gpus_per_actor=1.0 if use_gpu else 0.0)


if __name__ == "__main__":
    run_cli(main)
