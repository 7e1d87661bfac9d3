"""Where the extension's labels fall, and where the trained models' errors lie.

The point-to-full gap of the quality tables is measured per pixel; this splits it by the
pixel's distance to the nearest class boundary of the dense mask. For each trained run of
a quality table (its final checkpoint, found through the run's MLflow tags), on the
scenes at their own size without augmentation:

- val: the share of the pixels in each distance band, and the model's error rate there
  (where the point-to-full gap lives);
- train: what the run's own extension settings would label from the final model's
  logits and the image's points, per band: the share of the band labelled, and how
  many of those labels are right (what the extension can teach, and where).

    .venv/bin/python bench/extension_boundaries.py \\
        --results bench/results/quality-table3-pretrained-e12.json \\
        --rows "full,point,point+pdml+ext (default recipe)" --seeds 1,2

Writes bench/results/extension-boundaries.json (+ .png: error rate and extension per
band) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import benchlib

# Chebyshev distance to the nearest pixel of another class: [low, high) in pixels.
BANDS = ((0, 2), (2, 4), (4, 8), (8, 10**9))


def band_name(low: int, high: int) -> str:
    return f">= {low} px" if high > 10**8 else f"{low}-{high - 1} px"


def boundary_distance(mask: torch.Tensor, ignore_index: int, limit: int = 8) -> torch.Tensor:
    """``(H, W)`` Chebyshev distance (capped at ``limit``) from each pixel to the nearest
    pixel of a different labelled class: 0 on a boundary pixel itself, i.e. one whose
    3 x 3 neighbourhood holds another class."""
    classes = [int(c) for c in mask.unique() if int(c) != ignore_index]
    distance = torch.full(mask.shape, limit, dtype=torch.long)
    for c in classes:
        other = ((mask != c) & (mask != ignore_index)).float()[None, None]
        reach = other
        for d in range(limit):
            reach = F.max_pool2d(reach, 3, stride=1, padding=1)
            hit = (reach[0, 0] > 0) & (mask == c) & (distance > d)
            distance[hit] = d
    return distance


def checkpoint_folder(uri: str, run_id: str) -> Path:
    """The newest checkpoint of an MLflow run of the service (its Ray run's folder)."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(run_id)
    folder = Path(run.data.params["ray.storage_path"]) / run.data.tags["pdml.ray_run_name"]
    checkpoints = sorted(p for p in folder.glob("checkpoint_*") if p.is_dir())
    if not checkpoints:
        raise SystemExit(f"error: {folder}: no checkpoint left for run {run_id}")
    return checkpoints[-1]


def load_run(folder: Path):
    from pdml_ray.config import from_dict
    from pdml_ray.data import build_dataset
    from pdml_ray.engine import build_model_for
    from pdml_ray.service.train.checkpoint import load_training_state

    state = load_training_state(folder)
    cfg = from_dict(state["config"])
    train = build_dataset(cfg.data, "train", train_transform=False)
    model = build_model_for(cfg, train.num_classes)
    model.load_state_dict(state["model"])
    return cfg, model.eval(), train, build_dataset(cfg.data, "val")


@torch.no_grad()
def measure(cfg, model, train, val) -> dict:
    from pdml_ray.extension import extend_from_logits
    from pdml_ray.labels import IGNORE_INDEX

    counts = {name: {"val_pixels": 0, "val_errors": 0, "train_pixels": 0, "extended": 0,
                     "extended_right": 0} for name in map(lambda b: band_name(*b), BANDS)}

    def bands(mask):
        distance = boundary_distance(mask, IGNORE_INDEX)
        labelled = mask != IGNORE_INDEX
        return [(band_name(lo, hi), labelled & (distance >= lo) & (distance < hi))
                for lo, hi in BANDS]

    for item in val:
        predicted = model(item["image"][None])["out"][0].argmax(0)
        for name, where in bands(item["mask"]):
            counts[name]["val_pixels"] += int(where.sum())
            counts[name]["val_errors"] += int((where & (predicted != item["mask"])).sum())
    ext = cfg.extension
    for item in train:
        logits = model(item["image"][None])["out"]
        points = item["point_labels"][None]
        extended = extend_from_logits(logits, points, threshold=ext.threshold,
                                      window=ext.window, method=ext.method,
                                      boundary_margin=ext.boundary_margin)[0]
        new = (extended != IGNORE_INDEX) & (points[0] == IGNORE_INDEX)
        for name, where in bands(item["mask"]):
            counts[name]["train_pixels"] += int(where.sum())
            counts[name]["extended"] += int((where & new).sum())
            counts[name]["extended_right"] += int((where & new & (extended == item["mask"])).sum())
    return counts


def summarise(counts: dict) -> dict:
    val_pixels = sum(c["val_pixels"] for c in counts.values())
    val_errors = sum(c["val_errors"] for c in counts.values())
    out = {}
    for name, c in counts.items():
        out[name] = {
            "share_of_pixels": c["val_pixels"] / val_pixels,
            "error_rate": c["val_errors"] / max(c["val_pixels"], 1),
            "share_of_errors": c["val_errors"] / max(val_errors, 1),
            "extended_share": c["extended"] / max(c["train_pixels"], 1),
            "extension_accuracy": (c["extended_right"] / c["extended"] if c["extended"]
                                   else float("nan")),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, help="a quality table's raw JSON")
    parser.add_argument("--rows", required=True, help="comma-separated row labels")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = json.loads(Path(args.results).read_text())
    uri = table.get("tracking_uri") or f"sqlite:///{benchlib.RESULTS / 'mlflow.db'}"
    rows, seeds = args.rows.split(","), [int(s) for s in args.seeds.split(",")]
    found = {}
    for record in table["records"]:
        if record["row"] in rows and record["seed"] in seeds:
            folder = checkpoint_folder(uri, record["mlflow_run_id"])
            print(f"-- {record['row']}, seed {record['seed']}: {folder}", file=sys.stderr)
            found.setdefault(record["row"], {})[record["seed"]] = summarise(
                measure(*load_run(folder)))
    result = {"results": args.results, "bands": [band_name(*b) for b in BANDS], "runs": found}
    path = benchlib.write_json("extension-boundaries", result)
    plot(result, path.with_suffix(".png"))
    print(markdown(result))
    print(f"raw results: {path}")


def mean_over_seeds(by_seed: dict, band: str, key: str) -> float:
    return 100 * statistics.mean(by_seed[s][band][key] for s in by_seed)


def markdown(result: dict) -> str:
    lines = ["| run | distance to a class boundary | share of val pixels | error rate (val) | "
             "share of the run's errors | share labelled by the extension (train) | "
             "extension accuracy |", "|---|---|---|---|---|---|---|"]
    for row, by_seed in result["runs"].items():
        for band in result["bands"]:
            values = [mean_over_seeds(by_seed, band, key) for key in
                      ("share_of_pixels", "error_rate", "share_of_errors", "extended_share",
                       "extension_accuracy")]
            lines.append(f"| {row} (seeds {', '.join(map(str, sorted(by_seed)))}) | {band} | "
                         + " | ".join(f"{v:.1f}%" for v in values) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands, runs = result["bands"], result["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    width = 0.8 / len(runs)
    for i, (row, by_seed) in enumerate(runs.items()):
        xs = [b + (i - (len(runs) - 1) / 2) * width for b in range(len(bands))]
        left.bar(xs, [mean_over_seeds(by_seed, band, "error_rate") for band in bands],
                 width, label=row, color=f"C{i}")
        right.plot(range(len(bands)),
                   [mean_over_seeds(by_seed, band, "extension_accuracy") for band in bands],
                   "o-", color=f"C{i}", label=f"{row}: accuracy")
        right.plot(range(len(bands)),
                   [mean_over_seeds(by_seed, band, "extended_share") for band in bands],
                   "s--", color=f"C{i}", alpha=0.5, label=f"{row}: share labelled")
    for axis in (left, right):
        axis.set_xticks(range(len(bands)), bands)
        axis.set_xlabel("distance to the nearest class boundary of the dense mask")
        axis.grid(alpha=0.3, axis="y")
    left.set_ylabel("val pixels wrong (%)")
    left.legend(fontsize=8)
    right.set_ylabel("% (train scenes, final model)")
    right.legend(fontsize=7)
    fig.suptitle("Where the errors are, and what the extension labels there "
                 f"({Path(result['results']).name})", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
