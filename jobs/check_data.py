"""Check a dataset split before training: decode every image and label map, as Ray tasks
across the cluster, and report every problem at once, one line per file.

    python -m jobs.check_data --dataset ade20k --root data/ADEChallengeData2016 --split train
    ray job submit --working-dir . -- python -m jobs.check_data --dataset ade20k \\
        --root /home/ubuntu/data/ADEChallengeData2016 --split both

Finds corrupt or truncated images, unreadable label maps, label maps of another size than
their image, label values outside the dataset's classes, label maps of the wrong mode
(colour instead of class ids) and images or label maps without their partner file. The
exit code is 1 when any file has a problem. The files must be readable at the same path
on every node of the cluster (as training needs them).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from jobs.cli import positive_int, run_cli
from pdml_ray.data import DATASETS


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The Ray flags of the check, shared with jobs.prepare_points."""
    group = parser.add_argument_group("data check")
    group.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="Ray cluster to check on (default: $RAY_ADDRESS, else a local Ray)")
    group.add_argument("--local-below", type=int, default=32, metavar="N",
                       help="check splits of up to N images in this process, larger ones on "
                       "Ray tasks (default: 32)")
    group.add_argument("--chunk-size", type=positive_int, default=None, metavar="N",
                       help="images per Ray task (default: about four tasks per CPU)")


def check_splits(dataset: str, root: str, splits: tuple[str, ...],
                 args: argparse.Namespace) -> bool:
    """Check the splits, print one ``error: <file>: <problems>`` line per bad file on
    stderr and a summary per split on stdout; True if every split is clean."""
    import time

    from tqdm import tqdm

    from pdml_ray.data.check import by_file
    from pdml_ray.service.train.data_check import check_dataset, open_split
    from pdml_ray.service.runtime import ray_session

    opened = []
    for split in splits:
        start = time.monotonic()
        data, problems = open_split(dataset, root, split)
        opened.append((split, time.monotonic() - start, data, problems))
    on_ray = any(data is not None and len(data) > args.local_below for _, _, data, _ in opened)
    clean = True
    with ray_session(args.ray_address) if on_ray else contextlib.nullcontext():
        for split, seconds, data, problems in opened:
            start, tasks = time.monotonic(), 0
            if data is not None:
                with tqdm(total=len(data), desc=f"checking {dataset}/{split}", unit="image",
                          file=sys.stderr, disable=None) as bar:
                    problems, tasks = check_dataset(data, local_below=args.local_below,
                                                    chunk_size=args.chunk_size or 0,
                                                    progress=bar.update)
            lines = by_file(problems)
            for line in lines:
                print(f"error: {line}", file=sys.stderr)
            clean &= not lines
            checked = (f"{len(data)} images and their label maps" if data is not None
                       else "what could be listed")
            where = f"on {tasks} Ray tasks" if tasks else "in this process"
            print(f"{dataset}/{split} at {root}: checked {checked} in "
                  f"{seconds + time.monotonic() - start:.1f} s {where}: {len(lines) or 'no'} "
                  f"file{'' if len(lines) == 1 else 's'} with problems")
    return clean


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.check_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--root", required=True, help="the dataset folder (its released layout)")
    parser.add_argument("--split", default="train", choices=("train", "val", "both"))
    add_check_arguments(parser)
    args = parser.parse_args()
    splits = ("train", "val") if args.split == "both" else (args.split,)
    return 0 if check_splits(args.dataset, args.root, splits, args) else 1


if __name__ == "__main__":
    run_cli(main)
