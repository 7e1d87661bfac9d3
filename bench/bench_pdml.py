"""How much PDML adds to a training step, and the vectorised mining against Algorithm 1.

For B images x P points with D-dimensional embeddings (paper: 16 x ~14 x 2048) it times

- the vectorised mining alone (``mine_triplets``),
- mining + loss forward + backward to the embeddings (``pdml_terms(...).loss.backward()``),
- bilinear point sampling forward + backward on a (B, D, 41, 41) map (321 / 8 = 41),
- the same mining + loss written as Algorithm 1's Python loops (per-triplet loss terms),
- the forward + backward of the model step it belongs to (``--backbone``, ``--crop``).

The model step is measured at ``--step-batch`` images (resnet101 at 321 x 321 takes
seconds per image on a CPU) and scaled linearly to B images. Labels follow a Zipf-like
class frequency (p(c) ~ 1/(c+1)), as scene classes do, so images share classes.
Subgroups are ``--subgroup-size`` consecutive images. Prints a markdown table.

    .venv/bin/python bench/bench_pdml.py --images 16 64
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from pdml_ray.losses import mine_triplets, pdml_terms, sample_point_embeddings
from pdml_ray.models import build_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[16, 64],
                        help="batch sizes B to measure")
    parser.add_argument("--points-per-image", type=int, default=14)
    parser.add_argument("--dim", type=int, default=2048, help="embedding dimension D")
    parser.add_argument("--classes", type=int, default=59, help="PASCAL-Context: 59")
    parser.add_argument("--subgroup-size", type=int, default=4)
    parser.add_argument("--pairing", choices=["paper", "all"], default="paper")
    parser.add_argument("--reps", type=int, default=10, help="repetitions of vectorised timings")
    parser.add_argument("--ref-reps", type=int, default=2, help="repetitions of the loop version")
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--step-batch", type=int, default=2,
                        help="images per measured model step (scaled to B)")
    parser.add_argument("--step-reps", type=int, default=1)
    parser.add_argument("--skip-step", action="store_true", help="do not time the model step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON of the raw results (default: "
                        "bench/results/pdml.json, pdml-quick.json with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a validation run of the script, not a figure")
    args = parser.parse_args()
    if args.quick:
        args.images, args.dim, args.reps, args.ref_reps = [4, 8], 64, 2, 1
        args.backbone, args.crop, args.step_batch = "resnet18", 65, 1
    if args.out is None:
        name = "pdml-quick.json" if args.quick else "pdml.json"
        args.out = str(Path(__file__).resolve().parent / "results" / name)
    return args


def median_seconds(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_points(images: int, points: int, classes: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    frequency = 1.0 / torch.arange(1, classes + 1, dtype=torch.float64)
    labels = torch.multinomial(frequency, images * points, replacement=True, generator=g)
    image_ids = torch.arange(images).repeat_interleave(points) + 1000
    embeddings = torch.randn(images * points, dim, generator=g)
    return embeddings, labels, image_ids


def algorithm1_loss(embeddings, labels, image_ids, subgroup_ids, margin=20.0, alpha=0.8,
                    beta=1.0, pairing="paper"):
    """Algorithm 1 as loops: triplets of every ordered image pair, then L_t per triplet."""
    labels, image_ids, subgroup_ids = labels.tolist(), image_ids.tolist(), subgroup_ids.tolist()
    triplets = []
    for s in sorted(set(subgroup_ids)):
        members = [i for i in range(len(labels)) if subgroup_ids[i] == s]
        images = sorted({image_ids[i] for i in members})
        for n in images:
            for m in images:
                if m == n:
                    continue
                E_n = [i for i in members if image_ids[i] == n]
                E_m = [j for j in members if image_ids[j] == m]
                for i in E_n:
                    E_pos = [j for j in E_m if labels[j] == labels[i]]
                    E_neg = [j for j in E_m if labels[j] != labels[i]]
                    if pairing == "paper":
                        triplets.extend((i, p, q) for p, q in zip(E_pos, E_neg))
                    else:
                        triplets.extend((i, p, q) for p in E_pos for q in E_neg)
    total = embeddings.sum() * 0
    for a, p, n in triplets:
        pos = torch.linalg.vector_norm(embeddings[a] - embeddings[p])
        neg = torch.linalg.vector_norm(embeddings[a] - embeddings[n])
        total = total + alpha * pos + beta * torch.clamp(pos - neg + margin, min=0)
    return total / max(len(triplets), 1), len(triplets)


def model_step_seconds(args: argparse.Namespace) -> float:
    """Forward + backward of one step at ``--step-batch`` images, per image."""
    torch.manual_seed(args.seed)
    model = build_model(num_classes=args.classes, backbone=args.backbone,
                        output_stride=args.output_stride).train()
    images = torch.randn(args.step_batch, 3, args.crop, args.crop)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(images)
        (out["out"].mean() + out["embed"].mean()).backward()

    return median_seconds(step, args.step_reps) / args.step_batch


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    per_image_step = None if args.skip_step else model_step_seconds(args)
    feature_size = -(-args.crop // args.output_stride)
    rows = []
    for images in args.images:
        embeddings, labels, image_ids = make_points(images, args.points_per_image, args.classes,
                                                    args.dim, args.seed)
        subgroups = torch.arange(images).repeat_interleave(args.points_per_image) \
            // args.subgroup_size
        leaf = embeddings.clone().requires_grad_(True)

        def mining():
            mine_triplets(labels, image_ids, subgroups, pairing=args.pairing)

        def vectorised():
            leaf.grad = None
            pdml_terms(leaf, labels, image_ids, subgroups, pairing=args.pairing).loss.backward()

        def loop():
            leaf.grad = None
            algorithm1_loss(leaf, labels, image_ids, subgroups, pairing=args.pairing)[0].backward()

        embed = torch.randn(images, args.dim, feature_size, feature_size, requires_grad=True)
        point_labels = torch.full((images, args.crop, args.crop), 255)
        flat = torch.randperm(args.crop * args.crop)[: args.points_per_image]
        point_labels.view(images, -1)[:, flat] = labels.view(images, -1)

        def sampling():
            embed.grad = None
            sample_point_embeddings(embed, point_labels)[0].sum().backward()

        triplets = mine_triplets(labels, image_ids, subgroups, pairing=args.pairing).shape[0]
        assert algorithm1_loss(embeddings, labels, image_ids, subgroups,
                               pairing=args.pairing)[1] == triplets
        t_mine = median_seconds(mining, args.reps)
        t_vec = median_seconds(vectorised, args.reps)
        t_sample = median_seconds(sampling, max(args.reps // 4, 1))
        t_loop = median_seconds(loop, args.ref_reps, warmup=0)
        step = None if per_image_step is None else per_image_step * images
        rows.append((images, triplets, t_mine, t_vec, t_sample, t_loop, step))

    print(f"{args.points_per_image} points/image, D={args.dim}, {args.classes} classes, "
          f"subgroups of {args.subgroup_size}, pairing={args.pairing}; torch "
          f"{torch.__version__}, {args.threads} threads, {platform.machine()} CPU; model step: "
          f"{args.backbone} OS{args.output_stride} at {args.crop}x{args.crop}, measured at "
          f"batch {args.step_batch} and scaled linearly per image\n")
    print("| images x points | triplets | mining (ms) | mining + loss fwd+bwd (ms) "
          "| point sampling fwd+bwd (ms) | Algorithm-1 loops (ms) | speed-up "
          "| model step fwd+bwd (s) | (mining + loss) / step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for images, triplets, t_mine, t_vec, t_sample, t_loop, step in rows:
        share = "n/a" if step is None else f"{100 * t_vec / step:.4f}%"
        step_text = "n/a" if step is None else f"{step:.1f}"
        print(f"| {images} x {args.points_per_image} | {triplets} | {1e3 * t_mine:.2f} "
              f"| {1e3 * t_vec:.2f} | {1e3 * t_sample:.1f} | {1e3 * t_loop:.0f} "
              f"| {t_loop / t_vec:.0f}x | {step_text} | {share} |")
    keys = ("images", "triplets", "mining_s", "mining_loss_s", "sampling_s", "loop_s", "step_s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "torch": torch.__version__,
                                          "rows": [dict(zip(keys, row)) for row in rows]},
                                         indent=2))
    print(f"\nraw results: {args.out}")


if __name__ == "__main__":
    main()
