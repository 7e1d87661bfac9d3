"""The sweep's report tables, from result rows as results_table gives them."""

from __future__ import annotations

import csv
import io

from pdml_ray.service.tune.results import table_csv, table_markdown

ROWS = [
    {"trial": "a1", "alpha": 0.4, "beta": 0.8, "margin": 20.0, "threshold": 0.61234,
     "pdml_weight": 0.02, "lr": 3e-3, "val_miou": 0.4567, "val_pixel_acc": 0.8123,
     "evaluations": 3, "status": "completed", "run_id": "r1", "ray_run_name": "s-a1"},
    {"trial": "b2", "alpha": 1.0, "beta": 0.5, "margin": 5.0, "threshold": 0.9,
     "pdml_weight": 1.0, "lr": 1e-9, "val_miou": 0.1, "val_pixel_acc": 0.5,
     "evaluations": 1, "status": "stopped early", "run_id": "r2", "ray_run_name": "s-b2"},
]


def test_markdown_table_has_the_papers_columns_and_percentages():
    lines = table_markdown(ROWS).splitlines()
    assert lines == [
        "| alpha | beta | m | threshold | PDML weight | lr | mIoU | Pixel Acc | evals | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| 0.4 | 0.8 | 20 | 0.612 | 0.02 | 0.003 | 45.7 | 81.2% | 3 | completed |",
        "| 1 | 0.5 | 5 | 0.9 | 1 | 1e-09 | 10.0 | 50.0% | 1 | stopped early |"]
    assert table_markdown([]).splitlines() == lines[:2]


def test_csv_keeps_the_values_unrounded_with_trial_and_run():
    rows = list(csv.DictReader(io.StringIO(table_csv(ROWS))))
    assert [(r["trial"], r["run_id"], float(r["threshold"]), r["status"]) for r in rows] == [
        ("a1", "r1", 0.61234, "completed"), ("b2", "r2", 0.9, "stopped early")]
    assert "ray_run_name" not in rows[0]
