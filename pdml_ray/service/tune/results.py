"""A sweep's results: one row per trial, read from the trials' MLflow runs, and the
report logged on the sweep's parent run (the paper's Table 4 as markdown, a CSV and a
plot of val mIoU against margin and threshold)."""

from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from pdml_ray.config import Config
from pdml_ray.reports import markdown_table
from pdml_ray.service.tracking import RUN_NAME_TAG, experiment_id

COLUMNS = ("alpha", "beta", "margin", "threshold", "pdml_weight", "lr", "val_miou",
           "val_pixel_acc", "evaluations", "status")
# The paper's Table 4 layout: alpha, beta, m, ... | mIoU, pixel accuracy.
HEADER = ("alpha", "beta", "m", "threshold", "PDML weight", "lr", "mIoU", "Pixel Acc", "evals",
          "status")


def expected_evaluations(cfg: Config) -> int:
    """Evaluations a trial that is not stopped makes (every eval_every_epochs, and the last)."""
    every, epochs = cfg.train.eval_every_epochs, cfg.train.epochs
    return epochs // every + (1 if epochs % every else 0)


def results_table(cfg: Config, sweep_name: str, *,
                  ended_cleanly: set[str] = frozenset()) -> list[dict]:
    """One row per trial from its MLflow child run: swept values, best val mIoU, status.

    A trial is ``stopped early`` when it made fewer evaluations than a full run and ended
    without an error: ASHA stopped it. Its MLflow run, left RUNNING (the trial was killed
    before it could close it) or marked FAILED (the stop reached it as an exception), is
    closed as KILLED. ``ended_cleanly`` holds the trial ids Tune ended without an error.
    """
    full = expected_evaluations(cfg)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    exp = experiment_id(client, cfg.mlflow.experiment, cfg.mlflow.artifact_location)
    runs = client.search_runs([exp], filter_string=f"tags.`pdml.sweep` = '{sweep_name}' and "
                                                   f"tags.`{RUN_NAME_TAG}` != '{sweep_name}'")
    rows = []
    for run in runs:
        evals = client.get_metric_history(run.info.run_id, "val_miou")
        best = max(evals, key=lambda m: m.value) if evals else None
        status = run.info.status
        trial_id = run.data.tags.get("pdml.trial_id", "")
        if status == "RUNNING" or (status == "FAILED" and trial_id in ended_cleanly):
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            status = "KILLED"
        if status in ("FINISHED", "KILLED"):
            status = "completed" if len(evals) >= full else "stopped early"
        pixel = {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                    "val_pixel_acc")}
        rows.append({
            "trial": trial_id,
            "alpha": float(run.data.params["loss.alpha"]),
            "beta": float(run.data.params["loss.beta"]),
            "margin": float(run.data.params["loss.margin"]),
            "threshold": float(run.data.params["extension.threshold"]),
            "pdml_weight": float(run.data.params["loss.pdml_weight"]),
            "lr": float(run.data.params["train.lr"]),
            "val_miou": best.value if best else float("nan"),
            "val_pixel_acc": pixel.get(best.step, float("nan")) if best else float("nan"),
            "evaluations": len(evals),
            "status": status.lower(),
            "run_id": run.info.run_id,
            "ray_run_name": run.data.tags.get(RUN_NAME_TAG, ""),
        })
    rows.sort(key=lambda r: (-r["val_miou"] if not math.isnan(r["val_miou"]) else math.inf))
    return rows


def table_markdown(rows: list[dict]) -> str:
    """The rows in the paper's Table 4 layout; mIoU and pixel accuracy in percent."""
    return markdown_table(HEADER, ((
        f"{r['alpha']:g}", f"{r['beta']:g}", f"{r['margin']:g}", f"{r['threshold']:.3g}",
        f"{r['pdml_weight']:g}", f"{r['lr']:g}", f"{100 * r['val_miou']:.1f}",
        f"{100 * r['val_pixel_acc']:.1f}%", r["evaluations"], r["status"]) for r in rows))


def table_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*COLUMNS, "trial", "run_id"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot_sweep(rows: list[dict], path: Path) -> None:
    """Val mIoU against margin and against threshold, one point per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, key, label in ((axes[0], "margin", "margin m"),
                           (axes[1], "threshold", "extension threshold")):
        done = [r for r in rows if r["status"] == "completed"]
        stopped = [r for r in rows if r["status"] != "completed"]
        ax.scatter([r[key] for r in done], [r["val_miou"] for r in done], label="completed")
        ax.scatter([r[key] for r in stopped], [r["val_miou"] for r in stopped], marker="x",
                   label="stopped early")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val mIoU")
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_sweep_report(cfg: Config, parent_run_id: str, rows: list[dict]) -> None:
    """The table (markdown, CSV) and plot under ``sweep/`` of the parent run, and the best
    trial's val mIoU and run id on it."""
    client = MlflowClient(cfg.mlflow.tracking_uri)
    client.log_text(parent_run_id, table_markdown(rows), "sweep/results.md")
    client.log_text(parent_run_id, table_csv(rows), "sweep/results.csv")
    with tempfile.TemporaryDirectory() as folder:
        plot = Path(folder) / "val_miou_vs_margin_threshold.png"
        plot_sweep(rows, plot)
        client.log_artifact(parent_run_id, str(plot), "sweep")
    if rows and not math.isnan(rows[0]["val_miou"]):
        client.log_metric(parent_run_id, "best_val_miou", rows[0]["val_miou"])
        client.set_tag(parent_run_id, "pdml.best_trial_run", rows[0]["run_id"])
