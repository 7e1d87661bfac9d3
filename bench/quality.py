"""The paper's ablations on synthetic scenes: Tables 3, 4 and 5, and cross-worker mining.

Every run trains on a real local Ray (2 workers, one CPU each) through the service's own
driver, ``run_training`` (Tables 3, 5, mining), or its Ray Tune sweep, ``run_sweep``
(Table 4), with an MLflow sqlite store under ``bench/results/``. The scores come from
the driver's results and from MLflow; the script prints a markdown table of mean ± std
over seeds (sample std), a paired difference against a reference row (same seed, so
the seed's noise cancels) and the paper's PASCAL-Context numbers beside ours. Raw
results go to ``bench/results/quality-<table>.json``, rewritten after every run.

The benchmark (fixed): synthetic scenes, 200 train / 50 val images of 96 x 96 px,
8 classes (4 stuff, 4 things), one point per instance (8.5 per train image),
generator seed 0. The demo model (resnet18 OS8 + ASPP, random init), AdamW at 2e-3 with
the poly schedule, global batch 8 on 2 workers (local batch 4), ``--epochs`` epochs
(default 6: 150 steps), PDML weight 0.1, margin 20, alpha 0.8. Each run is evaluated
once, after its last epoch (no checkpoint selection on the validation split). A seed
changes the initialisation, data order and augmentation, never the scenes. Sized so that
each table, 3 seeds, fits within 45 minutes on 2 CPU cores: a 150-step run took 189 s
there on 2026-12-02, a Tune trial 206 s. The defaults of Tables 3 and 4 add one row each
beyond that (separate weighting; m = 24) and take 47 and 52 minutes; docs/benchmarks.md
has the commands for both sizes.

- ``--table 3``: supervision full, point, point+pdml, point+pdml+ext (the extension from
  epoch ``--ext-start``, default half the epochs, as the paper extends from PDML weights),
  and point+pdml+ext with ``extension.weighting=separate`` (not in the paper).
- ``--table 4``: point+pdml, a margin sweep at alpha 0.8 and an alpha sweep at margin 20,
  one ``run_sweep`` (grid, no early stopping) per sweep and seed; the shared point
  (margin 20, alpha 0.8) is trained once per seed and shown in both halves.
- ``--table 5``: point+pdml+ext with the extension methods region; score at
  ``--score-thresholds``; score+region at ``--thresholds``. Extension accuracy is the
  logged ``ext_accuracy`` pooled over every extension step of the run.
- ``--table mining``: point+pdml with in_batch, global and global+store mining at equal
  steps, subgroups of ``--subgroup-size`` images (default 4, the paper's and the config's:
  an ``in_batch`` subgroup is one worker's 4 images, a ``global`` subgroup takes 2 images
  from each worker, the global batch positions interleaving the workers).

    .venv/bin/python bench/quality.py --table 3 [--seeds 0,1,2] [--epochs 12] [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field

import benchlib

# The paper's PASCAL-Context validation numbers (Tables 3-5): mIoU, pixel accuracy (%),
# and for Table 5 the extension accuracy (%).
PAPER_TABLE3 = {"full": (39.6, 78.6), "point": (27.9, 55.3), "point+pdml": (29.7, 57.5),
                "point+pdml+ext": (30.0, 57.6)}
PAPER_MARGINS = {8.0: (29.2, 57.2), 12.0: (29.5, 57.0), 16.0: (29.4, 57.1), 20.0: (29.7, 57.5),
                 24.0: (29.4, 56.9)}
PAPER_ALPHAS = {0.0: (26.2, 53.5), 0.4: (28.6, 55.8), 0.8: (29.7, 57.5), 1.2: (29.5, 57.1),
                1.6: (29.4, 57.0)}
PAPER_TABLE5 = {("region", None): (97.6, 29.7, 57.5), ("score", 0.7): (56.9, 16.7, 40.3),
                ("score+region", 0.5): (97.7, 29.7, 57.5),
                ("score+region", 0.6): (98.0, 29.8, 57.4),
                ("score+region", 0.7): (98.2, 30.0, 57.6),
                ("score+region", 0.8): (98.3, 29.4, 57.1),
                ("score+region", 0.9): (98.4, 29.4, 56.9)}
PAPER_MARGIN, PAPER_ALPHA = 20.0, 0.8
PAPER_NOTE = "; paper: PASCAL-Context val, ResNet-101"
TITLES = {"3": "Table 3 analogue (supervision)", "4": "Table 4 analogue (margin, alpha)",
          "5": "Table 5 analogue (extension)", "mining": "Cross-worker mining"}


@dataclass(frozen=True)
class Row:
    """One line of a table: the config overrides of its runs and the paper's numbers."""

    label: str
    overrides: dict = field(default_factory=dict)
    paper: tuple = ()


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, choices=["3", "4", "5", "mining"])
    parser.add_argument("--rows", default=None,
                        help="Tables 3, 5, mining: run only these rows (comma-separated "
                        "labels); their results go to quality-table<N>-rows.json")
    parser.add_argument("--seeds", default=None, help="comma-separated train.seed values "
                        "(default 0,1,2; 0 with --quick)")
    parser.add_argument("--epochs", type=int, default=6,
                        help="epochs per run (default 6: 150 steps; 1 with --quick)")
    parser.add_argument("--ext-start", type=int, default=None,
                        help="first epoch of the online extension (default: epochs // 2)")
    parser.add_argument("--margins", type=floats, default=[8.0, 20.0, 24.0],
                        help="Table 4 margins at alpha 0.8 (paper: 8,12,16,20,24)")
    parser.add_argument("--alphas", type=floats, default=[0.0, 0.8, 1.6],
                        help="Table 4 alphas at margin 20 (paper: 0,0.4,0.8,1.2,1.6)")
    parser.add_argument("--thresholds", type=floats, default=[0.5, 0.7, 0.9],
                        help="Table 5 score+region thresholds")
    parser.add_argument("--score-thresholds", type=floats, default=[0.7],
                        help="Table 5 score-only thresholds (paper: 0.7)")
    parser.add_argument("--subgroup-size", type=int, default=4,
                        help="mining table: images per subgroup")
    benchlib.add_config_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.epochs = 1
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    if args.ext_start is None:
        args.ext_start = args.epochs // 2
    return args


def table_rows(args: argparse.Namespace) -> list[Row]:
    """The runs of Tables 3, 5 and mining (Table 4 is a sweep, see ``run_table4``)."""
    if args.table == "3":
        rows = [Row(mode, {"train.supervision": mode}, PAPER_TABLE3[mode])
                for mode in PAPER_TABLE3]
        # Not in the paper: the extension with its own CE term (extension.weighting).
        return rows + [Row("point+pdml+ext (separate)", {"train.supervision": "point+pdml+ext",
                                                        "extension.weighting": "separate"})]
    if args.table == "5":
        ext = {"train.supervision": "point+pdml+ext"}
        rows = [Row("region", {**ext, "extension.method": "region"},
                    PAPER_TABLE5[("region", None)])]
        for method, thresholds in (("score", args.score_thresholds),
                                   ("score+region", args.thresholds)):
            rows += [Row(f"{method} ({t:g})", {**ext, "extension.method": method,
                                              "extension.threshold": t},
                         PAPER_TABLE5.get((method, t), ())) for t in thresholds]
        return rows
    return [Row(mining, {"train.supervision": "point+pdml", "loss.mining": mining,
                         "loss.subgroup_size": args.subgroup_size})
            for mining in ("in_batch", "global", "global+store")]


def base_config(args: argparse.Namespace):
    cfg = benchlib.bench_config(args, {
        "train.epochs": args.epochs, "train.eval_every_epochs": args.epochs,
        "extension.start_epoch": args.ext_start, "ray.max_failures": 0,
        "ray.keep_checkpoints": 1}, experiment=f"bench-quality-table{args.table}")
    if cfg.data.dataset != "synthetic":
        return cfg
    # Log in intervals that divide an epoch: the engine drops an epoch's unlogged tail.
    steps = cfg.data.synthetic_train // cfg.train.batch_size
    every = max(d for d in range(1, 6) if steps % d == 0)
    return cfg.replace(**{"train.log_every_steps": every})


# -- one run ------------------------------------------------------------------------------
def pooled_extension_accuracy(uri: str, run_id: str) -> tuple[float, float]:
    """(accuracy over all extended pixels of the run, mean extended pixels per step)."""
    accuracy = {step: value for step, value, _ in benchlib.metric_history(uri, run_id,
                                                                          "ext_accuracy")}
    pixels = {step: value for step, value, _ in benchlib.metric_history(uri, run_id,
                                                                        "ext_pixels_per_step")}
    total = sum(pixels[s] for s in accuracy if s in pixels)
    if not total:
        return math.nan, 0.0
    return (sum(accuracy[s] * pixels[s] for s in accuracy if s in pixels) / total,
            statistics.mean(pixels.values()))


def class_groups(cfg, per_class_iou: list[float]) -> dict[str, float]:
    """Stuff and thing mIoU of the synthetic scenes (NaN classes left out)."""
    if cfg.data.dataset != "synthetic":
        return {}
    from pdml_ray.data.synthetic import STUFF_CLASSES, SYNTHETIC_CLASSES

    groups = {"stuff_miou": [], "things_miou": []}
    for name, iou in zip(SYNTHETIC_CLASSES, per_class_iou):
        if not math.isnan(iou):
            groups["stuff_miou" if name in STUFF_CLASSES else "things_miou"].append(iou)
    return {key: statistics.mean(v) if v else math.nan for key, v in groups.items()}


def train_once(cfg) -> dict:
    from pdml_ray.service.driver import run_training

    start = time.perf_counter()
    result = run_training(cfg)
    wall = time.perf_counter() - start
    uri, run_id = cfg.mlflow.tracking_uri, result.mlflow_run_id
    ext_accuracy, ext_pixels = pooled_extension_accuracy(uri, run_id)
    rates = [value for _, value, _ in benchlib.metric_history(uri, run_id, "images_per_s")]
    last = {key: (benchlib.metric_history(uri, run_id, key) or [(0, math.nan, 0)])[-1][1]
            for key in ("dis_pos", "dis_neg", "store_hit")}
    return {"val_miou": result.best_val_miou, "val_pixel_acc": result.best_val_pixel_acc,
            "per_class_iou": result.per_class_iou, **class_groups(cfg, result.per_class_iou),
            "ext_accuracy": ext_accuracy, "ext_pixels_per_step": ext_pixels,
            "seconds_per_step": (cfg.train.batch_size / benchlib.median(rates) if rates
                                 else math.nan),
            "final_dis_pos": last["dis_pos"], "final_dis_neg": last["dis_neg"],
            "final_store_hit": last["store_hit"], "wall_seconds": wall, "mlflow_run_id": run_id}


def run_rows(cfg, rows: list[Row], args, save) -> list[dict]:
    records = []
    for seed in args.seeds:
        for row in rows:
            with benchlib.phase(f"{row.label}, seed {seed}"):
                run_cfg = cfg.replace(**row.overrides, **{"train.seed": seed})
                records.append({"row": row.label, "seed": seed, **row.overrides,
                                **train_once(run_cfg)})
            save(records)
    return records


def run_table4(cfg, args, save) -> tuple[list[Row], list[dict]]:
    """Margin and alpha sweeps through ``run_sweep``, one of each per seed."""
    from pdml_ray.service.driver import unique_run_name
    from pdml_ray.service.sweep import run_sweep

    alphas = [a for a in args.alphas if not (a == PAPER_ALPHA and PAPER_MARGIN in args.margins)]
    sweeps = [("margin", args.margins, [PAPER_ALPHA])]
    if alphas:
        sweeps.append(("alpha", [PAPER_MARGIN], alphas))
    # A trial holds 0.01 CPU for its driver: its two workers take the rest of 2 CPUs.
    cpus = {} if cfg.ray.use_gpu else {"ray.cpus_per_worker": 0.99}
    records = []
    for seed in args.seeds:
        for name, margins, sweep_alphas in sweeps:
            with benchlib.phase(f"{name} sweep, seed {seed}"):
                sweep_cfg = cfg.replace(**cpus, **{
                    "train.supervision": "point+pdml", "train.seed": seed,
                    "sweep.name": unique_run_name(f"table4-{name}-seed{seed}"),
                    "sweep.search": "grid", "sweep.num_samples": 1, "sweep.scheduler": "none",
                    "sweep.margins": margins, "sweep.alphas": sweep_alphas,
                    "sweep.thresholds": [cfg.extension.threshold], "sweep.pdml_weights": [],
                    "sweep.learning_rates": []})
                start = time.perf_counter()
                result = run_sweep(sweep_cfg, resume=False)
                wall = time.perf_counter() - start
            for trial in result.table:
                records.append({"row": f"m={trial['margin']:g}, alpha={trial['alpha']:g}",
                                "seed": seed, "sweep": result.name,
                                **{k: trial[k] for k in ("margin", "alpha", "beta", "val_miou",
                                                         "val_pixel_acc", "status", "run_id")},
                                "sweep_wall_seconds": wall})
            save(records)
    rows = [Row(f"m={m:g}, alpha={PAPER_ALPHA:g}", {"margin": m, "alpha": PAPER_ALPHA},
                PAPER_MARGINS.get(m, ())) for m in args.margins]
    rows += [Row(f"m={PAPER_MARGIN:g}, alpha={a:g}", {"margin": PAPER_MARGIN, "alpha": a},
                 PAPER_ALPHAS.get(a, ())) for a in args.alphas]
    return rows, records


# -- the table ----------------------------------------------------------------------------
def values(records: list[dict], label: str, key: str) -> dict[int, float]:
    """``{seed: value}`` of one row's metric."""
    return {r["seed"]: r[key] for r in records if r["row"] == label and key in r}


def paired_delta(records: list[dict], label: str, reference: str) -> str:
    if label == reference:
        return "reference"
    ours, ref = values(records, label, "val_miou"), values(records, reference, "val_miou")
    return benchlib.mean_std([ours[s] - ref[s] for s in ours if s in ref], scale=100)


def paper_cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def render(args, rows: list[Row], records: list[dict]) -> str:
    def cell(label: str, key: str, scale: float = 100.0, digits: int = 1) -> str:
        return benchlib.mean_std(list(values(records, label, key).values()), scale, digits)

    table = []
    if args.table == "4":
        reference = f"m={PAPER_MARGIN:g}, alpha={PAPER_ALPHA:g}"
        for row in rows:
            paper = row.paper or (None, None)
            table.append((f"{row.overrides['alpha']:g}", "1", f"{row.overrides['margin']:g}",
                          cell(row.label, "val_miou"), cell(row.label, "val_pixel_acc"),
                          paired_delta(records, row.label, reference),
                          paper_cell(paper[0]), paper_cell(paper[1])))
        header = ("alpha", "beta", "m", "mIoU", "pixel acc (%)",
                  f"Δ mIoU vs m={PAPER_MARGIN:g}, alpha={PAPER_ALPHA:g} (paired)",
                  "paper mIoU", "paper pixel acc (%)")
    elif args.table == "5":
        for row in rows:
            paper = row.paper or (None, None, None)
            table.append((row.label, cell(row.label, "ext_accuracy"), cell(row.label, "val_miou"),
                          cell(row.label, "val_pixel_acc"),
                          cell(row.label, "ext_pixels_per_step", 1.0, 0),
                          paired_delta(records, row.label, rows[0].label),
                          paper_cell(paper[0]), paper_cell(paper[1]),
                          paper_cell(paper[2])))
        header = ("extension (threshold)", "extension acc (%)", "mIoU", "pixel acc (%)",
                  "extended pixels / step", f"Δ mIoU vs {rows[0].label} (paired)",
                  "paper ext acc (%)", "paper mIoU", "paper pixel acc (%)")
    else:
        reference = "point" if args.table == "3" else "in_batch"
        for row in rows:
            paper = row.paper or (None, None)
            extra = (() if args.table == "3" else
                     (cell(row.label, "seconds_per_step", 1.0, 3),))
            table.append((row.label, cell(row.label, "val_miou"), cell(row.label, "val_pixel_acc"),
                          cell(row.label, "stuff_miou"), cell(row.label, "things_miou"), *extra,
                          paired_delta(records, row.label, reference),
                          *((paper_cell(paper[0]), paper_cell(paper[1]))
                            if args.table == "3" else ())))
        header = ("supervision" if args.table == "3" else "mining", "mIoU", "pixel acc (%)",
                  "stuff mIoU", "things mIoU",
                  *(() if args.table == "3" else ("s / step",)),
                  f"Δ mIoU vs {reference} (paired)",
                  *(("paper mIoU", "paper pixel acc (%)") if args.table == "3" else ()))
    return benchlib.markdown_table(header, table)


def main() -> None:
    args = parse_args()
    benchlib.setup_environment()
    from pdml_ray.service.runtime import configure_logging, ray_session

    configure_logging()
    cfg = base_config(args)
    name = f"quality-table{args.table}" + ("-rows" if args.rows else "")

    def save(records: list[dict]) -> None:
        benchlib.write_json(name, {"args": vars(args), "config": cfg.to_dict(),
                                   "records": records}, quick=args.quick)

    rows = [] if args.table == "4" else table_rows(args)
    if args.rows:
        chosen = [label.strip() for label in args.rows.split(",")]
        unknown = set(chosen) - {row.label for row in rows}
        if unknown:
            raise SystemExit(f"error: --rows: no row {sorted(unknown)}; table "
                             f"{args.table} has {[row.label for row in rows]}")
        rows = [row for row in rows if row.label in chosen]
    start = time.perf_counter()
    with ray_session(cfg.ray.address):
        if args.table == "4":
            rows, records = run_table4(cfg, args, save)
        else:
            records = run_rows(cfg, rows, args, save)
    wall = time.perf_counter() - start
    steps = cfg.train.epochs * (cfg.data.synthetic_train // cfg.train.batch_size)
    title = TITLES[args.table]
    print(f"\n{title} on the synthetic benchmark: "
          f"{benchlib.describe_config(cfg, supervision=False, mining=False)}; "
          f"{cfg.train.epochs} epoch(s) ({steps} steps), seeds {args.seeds}; values in % "
          f"(mean ± sample std over seeds){PAPER_NOTE if args.table != 'mining' else ''}\n")
    print(render(args, rows, records))
    runs = len({(r["seed"], r["row"]) for r in records})
    print(f"{runs} runs in {wall / 60:.1f} min ({wall / max(runs, 1):.0f} s per run)")
    print(f"raw results: {benchlib.RESULTS / (name + ('-quick' if args.quick else '') + '.json')}")


if __name__ == "__main__":
    main()
