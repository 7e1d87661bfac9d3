"""Expected step time of the paper model on V100 and H100 GPUs, from counted FLOPs.

``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of one forward + backward of
the paper model (atrous ResNet-101, output stride 8, DeepLab-v2 ASPP, 59 classes) at
321 x 321 and the per-GPU batch of the paper (16 images on two GPUs: 8), on the ``meta``
device: shapes only, nothing is computed, so it takes seconds on any machine. It counts
convolutions and matrix products (their backward included); batch norm, ReLU, the
bilinear upsampling, the losses and the optimizer are not counted: they are memory-bound
and are what keeps real utilisation well below peak.

Expected step time = FLOPs / (peak x utilisation), for the dense peaks
V100 (SXM2): 15.7 TFLOPS FP32, 125 TFLOPS FP16 tensor cores;
H100 SXM: 67 TFLOPS FP32, 989 TFLOPS BF16 tensor cores (dense, no sparsity);
at the assumed utilisations (default 35% and 50%). The service trains with
``train.amp=true`` on GPUs (FP16 autocast), so the tensor-core rows are the relevant ones;
a convolutional net at 8 images per GPU rarely reaches 50% of a tensor-core peak.

The script ends with the commands that run the cost benchmarks on a GPU node.

    .venv/bin/python bench/bench_flops.py [--batch 8] [--crop 321] [--utilisation 0.35 0.5]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

import benchlib
from pdml_ray.models import build_model

# Dense peak TFLOPS from the vendors' data sheets (no structured sparsity).
PEAKS = (("V100 SXM2", "FP32", 15.7), ("V100 SXM2", "FP16 tensor (AMP)", 125.0),
         ("H100 SXM", "FP32", 67.0), ("H100 SXM", "BF16 tensor (AMP)", 989.0))

# Synthetic scenes at the paper's crop and batch: no dataset download needed.
GPU_SETTINGS = ("ray.use_gpu=true", "ray.cpus_per_worker=4", "train.batch_size=16",
                "model.backbone=resnet101", "data.synthetic_size=321", "data.crop_size=321")
PAPER_SCALE = (" ".join(f"--set {s}" for s in GPU_SETTINGS[:3]) + " \\\n    "
               + " ".join(f"--set {s}" for s in GPU_SETTINGS[3:]))
GPU_COMMANDS = f"""\
# On one node with 2 GPUs, from the repository root. Each script starts and stops its own
# local Ray; add --set ray.address=auto to use a running cluster instead.
.venv/bin/python bench/bench_step_share.py --device cuda --threads 8 --paper-measure-batch 8
.venv/bin/python bench/bench_ray_vs_torchrun.py --repeats 2 \\
    {PAPER_SCALE}
.venv/bin/python bench/bench_store.py \\
    {PAPER_SCALE}
.venv/bin/python bench/bench_memory_loader.py --loader-workers 0 4 \\
    {PAPER_SCALE}
# All of them in sequence, with the settings above:
.venv/bin/python bench/run_cost.py --gpu
# On the real data instead of synthetic scenes (points prepared as configs/*.yaml say):
.venv/bin/python bench/bench_ray_vs_torchrun.py --config configs/pascal_context.yaml \\
    --set model.pretrained=null"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--batch", type=int, default=8, help="images per GPU")
    parser.add_argument("--classes", type=int, default=59, help="PASCAL-Context: 59")
    parser.add_argument("--utilisation", type=float, nargs="+", default=[0.35, 0.5],
                        help="assumed fractions of peak")
    parser.add_argument("--train-images", type=int, default=4998,
                        help="images per epoch (PASCAL-Context train: 4998)")
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a validation run of the script, not a figure")
    args = parser.parse_args()
    if args.quick:
        args.crop, args.batch = 97, 1
    return args


def count_flops(args: argparse.Namespace) -> dict[str, float]:
    """FLOPs of one forward and of forward + backward, counted on the meta device."""
    with torch.device("meta"):
        model = build_model(num_classes=args.classes, backbone=args.backbone,
                            output_stride=args.output_stride).train()
        images = torch.randn(args.batch, 3, args.crop, args.crop)
    counter = FlopCounterMode(display=False)
    with counter:
        output = model(images)
        forward = counter.get_total_flops()
        (output["out"].sum() + output["embed"].sum()).backward()
    by_op = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    return {"forward": forward, "forward_backward": counter.get_total_flops(), "by_op": by_op}


def main() -> None:
    args = parse_args()
    flops = count_flops(args)
    total = flops["forward_backward"]
    steps_per_epoch = args.train_images // args.global_batch
    print(f"{args.backbone} OS{args.output_stride} + ASPP, {args.classes} classes, "
          f"{args.crop} x {args.crop}, batch {args.batch} per GPU: forward "
          f"{flops['forward'] / 1e12:.2f} TFLOP, forward + backward {total / 1e12:.2f} TFLOP "
          f"({total / args.batch / 1e9:.0f} GFLOP per image); {steps_per_epoch} steps per "
          f"epoch of {args.train_images} images at global batch {args.global_batch}\n")
    header = ["GPU", "precision", "peak (TFLOPS)"]
    header += [f"step at {100 * u:.0f}% (s)" for u in args.utilisation]
    header += [f"epoch at {100 * u:.0f}% (min)" for u in args.utilisation]
    rows, estimates = [], []
    for gpu, precision, peak in PEAKS:
        seconds = [total / (peak * 1e12 * u) for u in args.utilisation]
        estimates.append({"gpu": gpu, "precision": precision, "peak_tflops": peak,
                          "step_seconds": dict(zip(map(str, args.utilisation), seconds))})
        rows.append((gpu, precision, f"{peak:g}", *(f"{s:.3f}" for s in seconds),
                     *(f"{s * steps_per_epoch / 60:.2f}" for s in seconds)))
    print(benchlib.markdown_table(header, rows))
    print("Commands for the same cost benchmarks on GPUs:\n")
    print(GPU_COMMANDS)
    path = benchlib.write_json("flops", {"args": vars(args), "flops": flops,
                                         "estimates": estimates, "gpu_commands": GPU_COMMANDS},
                               quick=args.quick)
    print(f"\nraw results: {path}")


if __name__ == "__main__":
    main()
