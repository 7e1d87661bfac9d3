"""Write the point labels of a dataset split as Parquet: one point per instance, generated
from the dense labels, or imported from a file of clicks (a Label Studio or CVAT export,
or CSV/JSON).

    python -m jobs.prepare_points --dataset ade20k --root data/ADEChallengeData2016 \\
        --split train --out data/ade_points_train.parquet --seed 0
    python -m jobs.prepare_points --dataset synthetic --root data/synthetic --split train \\
        --import data/synthetic/points_train.parquet --import label_studio_export.json \\
        --out data/synthetic/points_round1.parquet

The split is first checked as ``jobs.check_data`` checks it (every image and label map
decoded, every problem listed; on Ray tasks for splits of more than --local-below
images); any problem stops the job before a file is written. --skip-check skips it.
"""

from __future__ import annotations

import argparse
import sys

from jobs.check_data import add_check_arguments, check_splits
from pdml_ray.data import DATASETS, DataError, describe_points, prepare_points
from pdml_ray.data.points import STRATEGIES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.prepare_points",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--root", required=True, help="the dataset folder (its released layout)")
    parser.add_argument("--split", default="train", choices=("train", "val"))
    parser.add_argument("--out", required=True, help="the Parquet file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random point choice")
    parser.add_argument("--strategy", default="random", choices=STRATEGIES,
                        help="random: any pixel of the instance; center: the pixel farthest "
                             "from its border")
    parser.add_argument("--import", dest="import_paths", metavar="FILE", action="append",
                        help="import points from FILE instead of generating them, told apart "
                             "by content: a Label Studio JSON export (KeyPointLabels), a CVAT "
                             "for images 1.1 XML export (<points>), both with class names; or "
                             "CSV image_id,y,x,class_id, JSON "
                             '{image_id: [{"y","x","cls"}]} or Parquet with class ids. '
                             "Repeat it to merge files (the clicks you had and a labelling "
                             "round's)")
    parser.add_argument("--skip-check", action="store_true",
                        help="do not decode every image and label map of the split first")
    add_check_arguments(parser)
    args = parser.parse_args(argv)

    if not args.skip_check and not check_splits(args.dataset, args.root, (args.split,), args):
        print("nothing written: fix the files above (or pass --skip-check)", file=sys.stderr)
        return 2

    try:
        if args.import_paths:
            from pdml_ray.labelling.tool_import import import_points

            table, dataset = import_points(args.dataset, args.root, args.split, args.out,
                                           args.import_paths)
        else:
            table, dataset = prepare_points(args.dataset, args.root, args.split, args.out,
                                            seed=args.seed, strategy=args.strategy)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    print(describe_points(table, dataset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
