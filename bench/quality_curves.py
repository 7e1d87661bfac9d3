"""Val-mIoU-vs-step curves of rows taken from several `bench/quality.py` result files.

A table's own picture shows the rows of one run of the script; a recipe measured later
under its own ``--tag`` lands in another file. This draws them on one set of axes,
each row under the label given to it:

    .venv/bin/python bench/quality_curves.py --out docs/results/quality-table3-pretrained-e12-defaults.png \\
        "docs/results/quality-table3-pretrained-e12.json:point=point" \\
        "docs/results/quality-table3-pretrained-e12-w4.json:point+pdml+ext (default recipe)=recipe, weight 4 (default)"

(docs/benchmarks.md has the full command behind its picture.)

Each source is ``<file>:<row>=<label>``; the file's records of that row, one per seed,
become the label's thin per-seed lines and its bold mean.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import plot_curves  # noqa: E402


def parse_source(text: str) -> tuple[Path, str, str]:
    file, sep, rest = text.partition(":")
    row, sep2, label = rest.rpartition("=")
    if not (sep and sep2 and row and label):
        raise SystemExit(f"error: source {text!r}: expected <file>:<row>=<label>")
    return Path(file), row, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="<file>:<row>=<label>, in legend order")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="val mIoU against the step")
    args = parser.parse_args()

    records, labels = [], []
    for file, row, label in map(parse_source, args.sources):
        try:
            found = [r for r in json.loads(file.read_text())["records"] if r["row"] == row]
        except (OSError, ValueError, KeyError) as exc:
            raise SystemExit(f"error: {file}: cannot read its records ({exc})") from None
        if not found:
            raise SystemExit(f"error: {file}: no records of row {row!r}")
        records += [{**r, "row": label} for r in found]
        labels.append(label)
    plot_curves(records, labels, args.title, args.out)
    print(f"wrote {args.out} ({len(records)} runs)")


if __name__ == "__main__":
    main()
