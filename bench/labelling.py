"""Where to click next, measured: a simulated annotator labels the clicks each strategy
asks for, the model is retrained between rounds, and mIoU is plotted against clicks.

    python bench/labelling.py                 # 3 seeds, 3 rounds, the demo's settings
    python bench/labelling.py --quick         # a validation run of the script

The dense masks stand in for the annotator: a click at (y, x) gets the mask's class
there (a click on an unlabelled pixel is spent and gives nothing). Every seed starts
from the same 25% of the one-point-per-instance clicks, drawn at random, and a model
trained on them; then, in rounds, the same number of clicks is added by each of

- ``suggest``:   ``jobs.suggest``'s ranking (Ray Data scoring with the model of the
                 strategy's previous round, the budget spread over regions and images);
- ``random``:    uniformly random pixels not yet clicked;
- ``instances``: one point per instance not yet clicked (the paper's protocol), drawn
                 from the full one-per-instance set, so its last round is that set;

until the count of the full one-per-instance set is reached, and the model is trained
again from scratch at the demo's settings (train.seed = the seed: paired by seed). Every
trained round is recorded in bench/results/labelling[-quick].json as soon as it ends; a
rerun skips what is recorded (resumable). The figure goes beside it (.png).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

import benchlib

STRATEGIES = ("suggest", "random", "instances")
OTHERS = ("random", "instances")  # what suggest is compared with, pair by pair
PERCENT_KEYS = ("thing_click_share", "ext_accuracy")  # whole percent in the mix table
NAME = "labelling"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated (default: 0,1,2)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds from the start set to the full click count (default: 3)")
    parser.add_argument("--start-fraction", type=float, default=0.25,
                        help="share of the one-per-instance clicks to start from (default: 0.25)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per training (default: the demo's; 1 with --quick)")
    parser.add_argument("--strategy", default="margin+coverage",
                        help="jobs.suggest's --strategy (default: margin+coverage)")
    parser.add_argument("--actors", type=int, default=2, help="scoring actors (default: 2)")
    benchlib.add_config_arguments(parser)
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.quick:
        args.rounds = min(args.rounds, 1)
    return args


def base_config(args: argparse.Namespace):
    from pdml_ray.config import Config

    demo = Config()
    epochs = args.epochs or (1 if args.quick else demo.train.epochs)
    # The demo's model as it is now (not benchlib's MEASURED_MODEL). One evaluation, at
    # the end, on the test split (scenes no part of the loop was developed on): the
    # score of a round is its final model, never an epoch picked afterwards.
    return benchlib.bench_config(args, {"model.backbone": demo.model.backbone,
                                        "model.pretrained": demo.model.pretrained,
                                        "data.eval_split": "test",
                                        "train.epochs": epochs, "train.eval_every_epochs": epochs,
                                        "ray.max_failures": 0, "ray.keep_checkpoints": 1},
                                 experiment="bench-labelling")


# -- clicks ----------------------------------------------------------------------------
Clicks = dict[str, np.ndarray]  # image id -> (K, 3) rows (y, x, class_id)


def count(clicks: Clicks) -> int:
    return sum(len(rows) for rows in clicks.values())


def pixels(clicks: Clicks) -> set[tuple[str, int, int]]:
    return {(image_id, int(y), int(x)) for image_id, rows in clicks.items() for y, x, _ in rows}


def thing_share(clicks: Clicks, thing_ids: set[int]) -> float:
    """The share of the clicks whose class is a thing (a countable object, not stuff)."""
    labels = [int(row[2]) for rows in clicks.values() for row in rows]
    return sum(label in thing_ids for label in labels) / len(labels) if labels else math.nan


def merged(clicks: Clicks, added: list[tuple[str, int, int, int]]) -> Clicks:
    out = {k: [tuple(r) for r in v.tolist()] for k, v in clicks.items()}
    for image_id, y, x, cls in added:
        if (y, x, cls) not in out.setdefault(image_id, []):
            out[image_id].append((y, x, cls))
    return {k: np.asarray(v, dtype=np.int64).reshape(-1, 3) for k, v in out.items() if v}


def start_clicks(full: Clicks, fraction: float, seed: int) -> Clicks:
    rows = [(image_id, *row) for image_id, table in full.items() for row in table.tolist()]
    rng = np.random.default_rng([seed, 1])
    chosen = rng.choice(len(rows), size=max(1, round(fraction * len(rows))), replace=False)
    return merged({}, [rows[i] for i in sorted(chosen)])


def round_targets(start: int, full: int, rounds: int) -> list[int]:
    """The click count after each round: even steps from ``start`` to ``full``."""
    return [start + round((full - start) * r / rounds) for r in range(1, rounds + 1)]


class Annotator:
    """Answers a click with the dense mask's class there (None on an unlabelled pixel)."""

    def __init__(self, dataset):
        self.masks = {image_id: dataset.load_mask(i) for i, image_id in enumerate(dataset.image_ids)}
        self.ignore = dataset.ignore_index

    def answer(self, clicks: list[tuple[str, int, int]]) -> list[tuple[str, int, int, int]]:
        labelled = []
        for image_id, y, x in clicks:
            cls = int(self.masks[image_id][y, x])
            if cls != self.ignore:
                labelled.append((image_id, y, x, cls))
        return labelled


def random_pixels(current: Clicks, annotator: Annotator, budget: int,
                  rng: np.random.Generator) -> list[tuple[str, int, int]]:
    taken = pixels(current)
    ids = sorted(annotator.masks)
    picked: list[tuple[str, int, int]] = []
    while len(picked) < budget:
        image_id = ids[int(rng.integers(len(ids)))]
        height, width = annotator.masks[image_id].shape
        pixel = (image_id, int(rng.integers(height)), int(rng.integers(width)))
        if pixel not in taken:
            taken.add(pixel)
            picked.append(pixel)
    return picked


def unclicked_instances(current: Clicks, full: Clicks, budget: int,
                        rng: np.random.Generator) -> list[tuple[str, int, int]]:
    taken = pixels(current)
    left = sorted(pixel for pixel in pixels(full) if pixel not in taken)
    chosen = rng.choice(len(left), size=min(budget, len(left)), replace=False)
    return [left[i] for i in sorted(chosen)]


def suggested(current: Clicks, checkpoint: str, dataset, budget: int, args) -> tuple[list, dict]:
    """``jobs.suggest``'s picks for ``current`` with the model of ``checkpoint``."""
    import pyarrow.fs as pafs

    from pdml_ray.labelling.scoring import ScoringSettings
    from pdml_ray.labelling.suggestions import pick_suggestions
    from pdml_ray.service.train.checkpoint import load_training_state
    from pdml_ray.service.infer.sources import image_sources
    from pdml_ray.service.infer.suggest import score_images

    state = load_training_state(checkpoint)
    scored = score_images(image_sources([r.image_path for r in dataset.records], None),
                          filesystem=pafs.LocalFileSystem(), state_dict=state["model"],
                          config=state["config"], clicks=current,
                          settings=ScoringSettings(strategy=args.strategy), actors=args.actors,
                          seed=0)
    picks = pick_suggestions(scored.image_ids, scored.candidates, budget, dataset.classes)
    return ([(s.image_id, s.y, s.x) for s in picks],
            {"images_per_s": scored.images_per_second, "bank_points": scored.bank_points})


# -- what a round's clicks were and what its model learnt --------------------------------
def click_mix(entry: dict, dataset, tracking_uri: str) -> dict:
    """The round's share of clicks on things, how often its extended labels were right,
    and its final model's stuff and thing mIoU (the last evaluation's per-class IoU in
    MLflow): where the strategies' clicks differ, and what that did."""
    from pdml_ray.data import read_points
    from pdml_ray.service.tracking import metric_key

    table = read_points(entry["points_file"])
    things = {i for i, name in enumerate(dataset.classes) if name not in dataset.stuff}
    mix = {"thing_click_share": thing_share({k: table.for_image(k) for k in table.image_ids},
                                            things),
           "ext_accuracy": benchlib.pooled_extension_accuracy(tracking_uri,
                                                              entry["mlflow_run_id"])[0]}
    for group, members in (("stuff_miou", dataset.stuff),
                           ("things_miou", [c for c in dataset.classes if c not in dataset.stuff])):
        ious = [history[-1][1] for name in members
                if (history := benchlib.metric_history(tracking_uri, entry["mlflow_run_id"],
                                                       f"val_iou/{metric_key(name)}"))]
        ious = [v for v in ious if not math.isnan(v)]
        mix[group] = statistics.mean(ious) if ious else math.nan
    return mix


def mix_table(records: list[dict], seeds: list[int]) -> str:
    """Per strategy and round, over the seeds: clicks on things, the extension's accuracy,
    thing and stuff mIoU."""
    rows = []
    chosen = [r for r in records if r["seed"] in seeds and "thing_click_share" in r]
    for strategy in ("start", *STRATEGIES):
        for round_ in sorted({r["round"] for r in chosen if r["strategy"] == strategy}):
            group = [r for r in chosen if (r["strategy"], r["round"]) == (strategy, round_)]
            rows.append([strategy, str(round_), str(max(r["spent"] for r in group)),
                         *(benchlib.mean_std([r.get(key, math.nan) for r in group], 100,
                                             0 if key in PERCENT_KEYS else 1)
                           for key in ("thing_click_share", "ext_accuracy", "things_miou",
                                       "stuff_miou"))])
    return benchlib.markdown_table(["strategy", "round", "clicks", "clicks on things (%)",
                                    "extension accuracy (%)", "things mIoU", "stuff mIoU"], rows)


# -- training ----------------------------------------------------------------------------
def train_round(cfg, clicks: Clicks, metadata: dict, folder: Path, label: str, seed: int) -> dict:
    from pdml_ray.data import write_points
    from pdml_ray.service.train.driver import run_training

    points = folder / f"{label}.parquet"
    write_points(points, clicks, metadata)
    run_cfg = cfg.replace(**{"data.points_file": str(points), "train.seed": seed,
                             "ray.run_name": f"labelling-{folder.name}-{label}-"
                                             f"{time.strftime('%Y%m%d-%H%M%S')}"})
    start = time.perf_counter()
    result = run_training(run_cfg)
    curve = benchlib.metric_history(cfg.mlflow.tracking_uri, result.mlflow_run_id, "val_miou")
    return {"val_miou": curve[-1][1], "checkpoint": result.checkpoint_path,
            "mlflow_run_id": result.mlflow_run_id, "points_file": str(points),
            "wall_seconds": time.perf_counter() - start}


def run_seed(cfg, args, seed: int, records: list[dict], save) -> None:
    from pdml_ray.data import dataset_class, ensure_synthetic, generate_point_table, read_points

    ensure_synthetic(cfg.data)
    dataset = dataset_class(cfg.data.dataset)(cfg.data.root, "train")
    annotator = Annotator(dataset)
    full_table = generate_point_table(dataset, seed=seed)
    full = {image_id: full_table.for_image(image_id) for image_id in full_table.image_ids}
    metadata = {k: full_table.metadata[k] for k in ("dataset", "split", "classes", "num_images")}
    folder = benchlib.RESULTS / f"{NAME}{'-quick' if args.quick else ''}" / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)

    def done(strategy: str, round_: int) -> dict | None:
        return next((r for r in records if (r["seed"], r["strategy"], r["round"])
                     == (seed, strategy, round_)), None)

    def record(strategy: str, round_: int, clicks: Clicks, extra: dict) -> dict:
        with benchlib.phase(f"seed {seed}: {strategy} round {round_}, {count(clicks)} clicks"):
            trained = train_round(cfg, clicks, metadata, folder, f"{strategy}-r{round_}", seed)
        entry = {"seed": seed, "strategy": strategy, "round": round_, "clicks": count(clicks),
                 "full_clicks": count(full), "split": cfg.data.eval_split, **extra, **trained}
        entry.update(click_mix(entry, dataset, cfg.mlflow.tracking_uri))
        records.append(entry)
        save(records)
        print(f"   {cfg.data.eval_split} mIoU {entry['val_miou']:.4f}", flush=True)
        return entry

    for entry in records:
        if entry["seed"] == seed and "thing_click_share" not in entry:
            entry.update(click_mix(entry, dataset, cfg.mlflow.tracking_uri))
            save(records)

    start = start_clicks(full, args.start_fraction, seed)
    first = done("start", 0) or record("start", 0, start, {"spent": count(start)})
    targets = round_targets(count(start), count(full), args.rounds)
    for strategy in STRATEGIES:
        clicks, previous, spent = start, first, count(start)
        for round_, target in enumerate(targets, start=1):
            finished = done(strategy, round_)
            if finished is not None:  # resumed: the round's clicks are in its points file
                table = read_points(finished["points_file"])
                clicks = {k: table.for_image(k) for k in table.image_ids}
                previous, spent = finished, finished["spent"]
                continue
            budget = target - spent
            # A generator per round: a resumed sitting draws what an unbroken one would.
            rng = np.random.default_rng([seed, STRATEGIES.index(strategy), round_])
            extra: dict = {}
            if strategy == "suggest":
                asked, extra = suggested(clicks, previous["checkpoint"], dataset, budget, args)
            elif strategy == "random":
                asked = random_pixels(clicks, annotator, budget, rng)
            else:
                asked = unclicked_instances(clicks, full, budget, rng)
            clicks = merged(clicks, annotator.answer(asked))
            spent += len(asked)
            previous = record(strategy, round_, clicks, {"spent": spent, **extra})


# -- report ------------------------------------------------------------------------------
def summary(records: list[dict], seeds: list[int]) -> tuple[str, dict]:
    rows, verdicts = [], {}
    by = {(r["seed"], r["strategy"], r["round"]): r for r in records if r["seed"] in seeds}
    rounds = sorted({r["round"] for r in by.values() if r["strategy"] != "start"})
    # Paired by seed: same start, same training seed, only the added clicks differ.
    header = ["clicks (share of full)", *STRATEGIES, *(f"suggest − {other}" for other in OTHERS)]
    start = [by[(s, "start", 0)]["val_miou"] for s in seeds if (s, "start", 0) in by]
    full = max((r["full_clicks"] for r in by.values()), default=0)
    if start:
        first = next(r for r in by.values() if r["strategy"] == "start")
        rows.append([f"{first['spent']} ({first['spent'] / full:.0%})",
                     *[benchlib.mean_std(start, 100)] * len(STRATEGIES), *["—"] * len(OTHERS)])
    for round_ in rounds:
        spent = [r["spent"] for r in by.values() if r["round"] == round_ and r["strategy"] != "start"]
        cells = [benchlib.mean_std([by[(s, strategy, round_)]["val_miou"] for s in seeds
                                    if (s, strategy, round_) in by], 100) for strategy in STRATEGIES]
        deltas = [benchlib.paired_text(
            [by[(s, "suggest", round_)]["val_miou"] - by[(s, other, round_)]["val_miou"]
             for s in seeds if (s, "suggest", round_) in by and (s, other, round_) in by], 100)
            for other in OTHERS]
        rows.append([f"{max(spent)} ({max(spent) / full:.0%})", *cells, *deltas])
        wins = [by[(s, "suggest", round_)]["val_miou"] > by[(s, "random", round_)]["val_miou"]
                for s in seeds if (s, "suggest", round_) in by and (s, "random", round_) in by]
        if wins:  # no verdict before a round has both strategies in some seed
            verdicts[f"round {round_}: suggest beats random in every seed"] = all(wins)
        means = {strategy: statistics.mean(v) for strategy in ("suggest", "instances")
                 if (v := [by[(s, strategy, round_)]["val_miou"] for s in seeds
                           if (s, strategy, round_) in by])}
        if len(means) == 2:
            verdicts[f"round {round_}: suggest >= instances on the mean"] = (
                means["suggest"] >= means["instances"])
    full_mean = [by[(s, "instances", rounds[-1])]["val_miou"] for s in seeds
                 if rounds and (s, "instances", rounds[-1]) in by]
    if full_mean:
        reached = [max(r["spent"] for r in by.values() if r["round"] == round_)
                   for round_ in rounds
                   if (v := [by[(s, "suggest", round_)]["val_miou"] for s in seeds
                             if (s, "suggest", round_) in by])
                   and statistics.mean(v) >= statistics.mean(full_mean)]
        share = min(reached) / full if reached else math.nan
        verdicts["suggest reaches the full set's mIoU with <= 70% of its clicks"] = share <= 0.7
        verdicts["share of the full clicks at which suggest reaches it"] = share
    return benchlib.markdown_table(header, rows), verdicts


def plot(records: list[dict], seeds: list[int], path: Path) -> None:
    from matplotlib.figure import Figure

    from pdml_ray.reports import save_figure

    figure = Figure(figsize=(6.5, 4))
    axes = figure.subplots()
    colours = {"suggest": "#d62728", "random": "#7f7f7f", "instances": "#1f77b4"}
    starts = {r["seed"]: r for r in records if r["strategy"] == "start" and r["seed"] in seeds}
    for strategy in STRATEGIES:
        points: dict[int, list[float]] = {}
        for seed in seeds:
            line = sorted([starts[seed]] if seed in starts else [], key=lambda r: r["spent"])
            line += sorted((r for r in records if r["seed"] == seed and r["strategy"] == strategy),
                           key=lambda r: r["round"])
            if len(line) > 1:
                axes.plot([r["spent"] for r in line], [100 * r["val_miou"] for r in line],
                          color=colours[strategy], alpha=0.25, linewidth=1)
            for r in line:
                points.setdefault(r["spent"], []).append(100 * r["val_miou"])
        if points:
            xs = sorted(points)
            axes.plot(xs, [statistics.mean(points[x]) for x in xs], color=colours[strategy],
                      marker="o", linewidth=2, label=strategy)
    axes.set_xlabel("clicks")
    axes.set_ylabel("test mIoU (%)")
    axes.set_title(f"mIoU against clicks (thin: each of {len(seeds)} seed(s); thick: mean)")
    axes.legend()
    figure.tight_layout()
    save_figure(figure, path)


def main() -> None:
    args = parse_args()
    benchlib.setup_environment()
    from pdml_ray.service.runtime import configure_logging, ray_session

    configure_logging()
    cfg = base_config(args)
    path = benchlib.RESULTS / f"{NAME}{'-quick' if args.quick else ''}.json"
    records = json.loads(path.read_text())["records"] if path.is_file() else []

    def save(records: list[dict]) -> None:
        benchlib.write_json(NAME, {"args": vars(args), "config": cfg.to_dict(),
                                   "records": records}, quick=args.quick)

    benchlib.warn_if_busy()
    with ray_session(cfg.ray.address):
        for seed in args.seeds:
            run_seed(cfg, args, seed, records, save)
    table, verdicts = summary(records, args.seeds)
    print(f"\n{cfg.data.eval_split} mIoU (%) against clicks: {benchlib.describe_config(cfg)}, "
          f"{cfg.train.epochs} "
          f"epoch(s), seeds {args.seeds}, mean ± sample std\n")
    print(table)
    for claim, verdict in verdicts.items():
        print(f"- {claim}: {verdict}")
    print(f"\nwhere the clicks went and what the models learnt ({cfg.data.eval_split} mIoU, %, "
          f"mean ± sample std over the seeds):\n")
    print(mix_table(records, args.seeds))
    save(records)
    picture = path.with_suffix(".png")
    plot(records, args.seeds, picture)
    print(f"\nraw results: {path}\nfigure: {picture}")


if __name__ == "__main__":
    main()
