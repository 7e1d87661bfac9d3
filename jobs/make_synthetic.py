"""Generate synthetic scenes in the ADE20K layout and print their statistics.

    python -m jobs.make_synthetic --out data/synthetic --train 200 --val 50 --size 96 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time

from pdml_ray.data import DataError, describe_scenes, generate_scenes
from pdml_ray.data.io import check_output_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.make_synthetic",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="new (or empty) folder to write the scenes to")
    parser.add_argument("--train", type=int, default=200, help="training scenes")
    parser.add_argument("--val", type=int, default=50, help="validation scenes")
    parser.add_argument("--size", type=int, default=96, help="scene side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        check_output_folder(args.out, "--out")
        stats = generate_scenes(args.out, train=args.train, val=args.val, size=args.size,
                                seed=args.seed)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.train} train + {args.val} val scenes to {args.out} "
          f"in {time.perf_counter() - start:.1f}s")
    print(describe_scenes(stats))
    print(f"next: python -m jobs.prepare_points --dataset synthetic --root {args.out} "
          f"--split train --out {args.out}/points_train.parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
