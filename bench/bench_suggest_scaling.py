"""Scoring throughput of ``jobs.suggest`` on Ray Data: images/s with 1 and 2 actors.

    python bench/bench_suggest_scaling.py                # the benchmark's 200 train scenes, x5
    python bench/bench_suggest_scaling.py --quick        # a validation run of the script

The model is the demo's architecture with random weights (speed does not depend on the
weights), the clicks the one-point-per-instance set, the strategy the default
(margin+coverage). Each actor count runs ``--repeats`` passes on one Ray session (a local
Ray with the machine's CPUs unless ray.address names a cluster), each actor on one CPU;
the figure is the scoring pass only (the coverage bank pass is timed
apart). Two throughputs per pass: the whole pass (actors' start included), and the
steady state, from the first finished batch to the last (what a long run on a cluster
approaches). Raw JSON: bench/results/suggest_scaling[-quick].json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import benchlib


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", default="1,2", help="actor counts (default: 1,2)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per setting (default: 3)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (default: 4)")
    parser.add_argument("--images", type=int, default=0,
                        help="score only the first N train images (0: all)")
    parser.add_argument("--copies", type=int, default=5,
                        help="score the images this many times per pass, so a pass outlasts "
                        "the actors' start (default: 5; 1 with --quick)")
    benchlib.add_config_arguments(parser)
    args = parser.parse_args()
    args.actors = [int(a) for a in args.actors.split(",") if a.strip()]
    if args.quick:
        args.repeats = min(args.repeats, 1)
        args.copies = 1
    return args


def one_pass(sources, clicks, state, config, actors: int, batch_size: int) -> dict:
    import pyarrow.fs as pafs

    from pdml_ray.labelling.scoring import ScoringSettings
    from pdml_ray.service.infer.suggest import score_images

    finished: list[tuple[float, int]] = []
    scored = score_images(sources, filesystem=pafs.LocalFileSystem(), state_dict=state,
                          config=config, clicks=clicks, settings=ScoringSettings(),
                          actors=actors, batch_size=batch_size,
                          progress=lambda n: finished.append((time.perf_counter(), n)))
    steady = float("nan")
    if len(finished) > 1:
        images_after_first = sum(n for _, n in finished[1:])
        steady = images_after_first / (finished[-1][0] - finished[0][0])
    return {"images": scored.images, "scoring_s": scored.scoring_seconds,
            "bank_s": scored.bank_seconds, "images_per_s": scored.images_per_second,
            "steady_images_per_s": steady, "candidates": len(scored.candidates)}


def main() -> None:
    args = parse_args()
    benchlib.setup_environment()
    import torch

    from pdml_ray.data import dataset_class, ensure_synthetic, generate_point_table
    from pdml_ray.data.catalog import dataset_class as classes_of
    from pdml_ray.models import build_model
    from pdml_ray.service.infer.sources import image_sources
    from pdml_ray.service.runtime import configure_logging, ray_session

    configure_logging()
    cfg = benchlib.bench_config(args, {}, experiment="bench-suggest-scaling")
    ensure_synthetic(cfg.data)
    dataset = dataset_class(cfg.data.dataset)(cfg.data.root, "train", max_images=args.images)
    table = generate_point_table(dataset, seed=0)
    clicks = {image_id: table.for_image(image_id) for image_id in table.image_ids}
    torch.manual_seed(0)
    model = build_model(num_classes=len(classes_of(cfg.data.dataset).classes),
                        backbone=cfg.model.backbone, output_stride=cfg.model.output_stride,
                        head=cfg.model.head)
    sources = image_sources([r.image_path for r in dataset.records], None) * args.copies
    benchlib.warn_if_busy()
    results: dict[int, list[dict]] = {}
    with ray_session(cfg.ray.address):
        for actors in args.actors:
            for repeat in range(args.repeats):
                with benchlib.phase(f"{actors} actor(s), pass {repeat + 1}/{args.repeats}"):
                    results.setdefault(actors, []).append(one_pass(
                        sources, clicks, model.state_dict(), cfg.to_dict(), actors,
                        args.batch_size))
    rows, medians = [], {}
    for actors, passes in results.items():
        medians[actors] = {key: statistics.median(p[key] for p in passes)
                           for key in ("images_per_s", "steady_images_per_s", "bank_s")}
        rows.append([actors, f"{medians[actors]['images_per_s']:.2f}",
                     f"{medians[actors]['steady_images_per_s']:.2f}",
                     f"{medians[actors]['bank_s']:.1f}"])
    base = medians.get(min(medians)) if medians else None
    for row, actors in zip(rows, medians):
        ratio = (medians[actors]["steady_images_per_s"] / base["steady_images_per_s"]
                 if base else float("nan"))
        row.append(f"{ratio:.2f}x" if ratio == ratio else "n/a")  # NaN: a single batch
    print(f"\nScoring for suggestions, {len(sources)} images of {cfg.data.dataset} at "
          f"{cfg.data.synthetic_size} px, {cfg.model.backbone} {cfg.model.head}, batch "
          f"{args.batch_size}, median of {args.repeats} pass(es)\n")
    print(benchlib.markdown_table(["actors", "images/s (whole pass)", "images/s (steady)",
                                   "bank pass s", "speed-up (steady)"], rows))
    path = benchlib.write_json("suggest_scaling", {"args": vars(args), "config": cfg.to_dict(),
                                                   "passes": results, "medians": medians},
                               quick=args.quick)
    print(f"\nraw results: {path}")


if __name__ == "__main__":
    main()
