"""Share of a training step spent in PDML (point sampling, mining, loss) and online extension.

Two settings, one process each, no Ray:

- demo: resnet18 OS8 + ASPP on the benchmark's synthetic scenes (96 px crops, 8 classes,
  8.5 points per image), local batch 4 of a global batch of 8 (2 workers); real
  batches from the training DataLoader.
- paper: resnet101 OS8 + ASPP at 321 x 321, local batch 8 of a global batch of 16 (two
  GPUs), 59 classes (PASCAL-Context), 14 points per image with Zipf-like class
  frequencies, random images. The model step is measured at ``--paper-measure-batch``
  images and scaled linearly to the local batch (seconds per image on a CPU).

Timed (median over ``--reps`` after a warm-up):

- step: forward + point CE + backward + optimizer step, i.e. ``engine.train_one_epoch``
  with supervision ``point``, timed per step by its own ``images_per_s``: the training
  step that PDML and the extension are added to;
- extension: ``extend_from_logits`` (score+region, 5x5, 0.7: the softmax at the points'
  squares only) + ``extension_accuracy`` on the local batch's logits, what ``compute_loss`` runs under
  ``no_grad``;
- sampling: ``sample_point_embeddings`` forward + backward on the local feature map;
- mining + loss: ``pdml_terms`` (Algorithm 1's triplets, Eqs. 3-5) forward + backward over
  the points of the whole global batch, as the ``global`` miner mines it on every worker
  (each worker then scores only its own anchors, so this is an upper bound).

Share = (extension + sampling + mining + loss) / step; the target is under 2%. For the
demo, the engine's full ``point+pdml+ext`` step is also timed as a cross-check; the
difference of two noisy medians is only indicative.

    .venv/bin/python bench/bench_step_share.py [--threads 1] [--reps 10] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

import benchlib
from bench_pdml import make_points
from pdml_ray.config import Config, from_dict
from pdml_ray.data import build_dataset
from pdml_ray.engine import make_optimizer, train_one_epoch
from pdml_ray.extension import extend_from_logits, extension_accuracy
from pdml_ray.losses import pdml_terms, sample_point_embeddings
from pdml_ray.mining import InBatchMiner
from pdml_ray.models import build_model


@dataclass(frozen=True)
class Setting:
    """One measured configuration: the model of ``cfg`` at a local and a global batch."""

    name: str
    cfg: Config
    local_batch: int
    global_batch: int
    measure_batch: int  # images per measured model step
    num_classes: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=["demo", "paper"],
                        default=["demo", "paper"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: as a Ray worker holding one CPU)")
    parser.add_argument("--reps", type=int, default=10, help="timed demo steps / components")
    parser.add_argument("--paper-reps", type=int, default=2, help="timed paper-model steps")
    parser.add_argument("--paper-crop", type=int, default=321)
    parser.add_argument("--paper-local-batch", type=int, default=8)
    parser.add_argument("--paper-global-batch", type=int, default=16)
    parser.add_argument("--paper-measure-batch", type=int, default=2,
                        help="images per measured paper-model step (scaled to the local batch)")
    parser.add_argument("--paper-points", type=int, default=14, help="points per image")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a validation run of the script, not a figure")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.paper_reps = 2, 1
        args.paper_crop, args.paper_local_batch, args.paper_global_batch = 97, 2, 4
        args.paper_measure_batch = 1
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, reps: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def engine_step_seconds(setting: Setting, batch: dict, supervision: str, reps: int,
                        device: torch.device) -> float:
    """Median seconds per step of ``train_one_epoch`` on ``batch`` repeated, one warm-up."""
    cfg = setting.cfg.replace(**{"train.supervision": supervision, "train.log_every_steps": 1,
                                 "extension.start_epoch": 0})
    torch.manual_seed(0)
    model = build_model(num_classes=setting.num_classes, backbone=cfg.model.backbone,
                        output_stride=cfg.model.output_stride, head=cfg.model.head).to(device)
    optimizer = make_optimizer(cfg, model)
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    miner = InBatchMiner(cfg.loss) if cfg.uses_pdml else None
    seconds: list[float] = []

    def on_log(step: int, means: dict) -> None:
        seconds.append(batch["image"].shape[0] / means["images_per_s"])

    steps = reps + 1
    train_one_epoch(model, [batch] * steps, optimizer, cfg=cfg, epoch=0, start_step=0,
                    total_steps=steps, device=device, miner=miner, scaler=scaler, on_log=on_log)
    return statistics.median(seconds[1:])


def component_seconds(setting: Setting, local: dict, global_points: tuple, embed: torch.Tensor,
                      logits: torch.Tensor, reps: int, device: torch.device) -> dict[str, float]:
    """Extension, point sampling and mining + loss, timed on the step's own tensors."""
    cfg = setting.cfg

    def extension():
        with torch.no_grad():
            ext = cfg.extension
            target = extend_from_logits(logits, local["point_labels"], threshold=ext.threshold,
                                        window=ext.window, method=ext.method)
            extension_accuracy(target, local["point_labels"], local["mask"])

    leaf_map = embed.detach().clone().requires_grad_(True)

    def sampling():
        leaf_map.grad = None
        sample_point_embeddings(leaf_map, local["point_labels"])[0].sum().backward()

    embeddings, labels, image_ids, subgroups = global_points
    leaf = embeddings.detach().clone().requires_grad_(True)

    def mining_loss():
        leaf.grad = None
        pdml_terms(leaf, labels, image_ids, subgroups, margin=cfg.loss.margin, alpha=cfg.loss.alpha,
                   beta=cfg.loss.beta, pairing=cfg.loss.pairing).loss.backward()

    return {"extension": median_seconds(extension, reps, device),
            "sampling": median_seconds(sampling, reps, device),
            "mining_loss": median_seconds(mining_loss, reps, device)}


def points_of(embed: torch.Tensor, point_labels: torch.Tensor, subgroup_size: int) -> tuple:
    """A batch's points as the global miner sees them: embeddings (N, D), labels (N,),
    image ids (N,) and subgroup ids (N,) of consecutive images."""
    embeddings, labels, batch_index = sample_point_embeddings(embed, point_labels)
    return embeddings.detach(), labels, batch_index, batch_index // subgroup_size


def measure_demo(args, device: torch.device) -> dict:
    cli = argparse.Namespace(config=None, overrides=[], quick=args.quick)
    cfg = benchlib.bench_config(cli, {}, experiment="bench-step-share")
    dataset = build_dataset(cfg.data, "train")
    local_batch = cfg.train.batch_size // cfg.ray.num_workers
    setting = Setting("demo", cfg, local_batch=local_batch, global_batch=cfg.train.batch_size,
                      measure_batch=local_batch, num_classes=dataset.num_classes)
    loader = DataLoader(dataset, batch_size=setting.global_batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    whole = {k: v.to(device) for k, v in next(iter(loader)).items()}
    local = {k: v[: setting.local_batch] for k, v in whole.items()}
    torch.manual_seed(0)
    model = build_model(num_classes=setting.num_classes, backbone=cfg.model.backbone,
                        output_stride=cfg.model.output_stride, head=cfg.model.head).to(device)
    with torch.no_grad():
        output = model(whole["image"])
    global_points = points_of(output["embed"], whole["point_labels"], cfg.loss.subgroup_size)
    parts = component_seconds(setting, local, global_points, output["embed"][: setting.local_batch],
                              output["out"][: setting.local_batch], args.reps, device)
    step = engine_step_seconds(setting, local, "point", args.reps, device)
    full = engine_step_seconds(setting, local, "point+pdml+ext", args.reps, device)
    return summarise(setting, parts, step, full, points=len(global_points[1]))


def measure_paper(args, device: torch.device) -> dict:
    cfg = from_dict({"model": {"backbone": "resnet101", "output_stride": 8, "head": "aspp"},
                     "train": {"optimizer": "sgd", "lr": 2.5e-4, "head_lr_mult": 10.0,
                               "weight_decay": 5e-4, "batch_size": args.paper_global_batch},
                     "ray": {"num_workers": 2}})
    setting = Setting("paper", cfg, local_batch=args.paper_local_batch,
                      global_batch=args.paper_global_batch,
                      measure_batch=args.paper_measure_batch, num_classes=59)
    crop, classes = args.paper_crop, setting.num_classes
    feature = -(-crop // cfg.model.output_stride)
    g = torch.Generator().manual_seed(0)

    def random_batch(images: int) -> dict:
        embeddings, labels, _ = make_points(images, args.paper_points, classes, 8, seed=images)
        point_labels = torch.full((images, crop, crop), 255, dtype=torch.long)
        for i in range(images):
            where = torch.randperm(crop * crop, generator=g)[: args.paper_points]
            point_labels[i].view(-1)[where] = labels.view(images, -1)[i]
        return {"image": torch.randn(images, 3, crop, crop, generator=g),
                "point_labels": point_labels,
                "mask": torch.randint(0, classes, (images, crop, crop), generator=g),
                "image_index": torch.arange(images)}

    local = {k: v.to(device) for k, v in random_batch(setting.local_batch).items()}
    embed = torch.randn(setting.local_batch, 2048, feature, feature, generator=g).to(device)
    logits = torch.randn(setting.local_batch, classes, crop, crop, generator=g).to(device)
    embeddings, labels, image_ids = make_points(setting.global_batch, args.paper_points, classes,
                                                2048, seed=0)
    subgroups = (torch.arange(setting.global_batch).repeat_interleave(args.paper_points)
                 // cfg.loss.subgroup_size)
    global_points = (embeddings.to(device), labels.to(device), image_ids.to(device),
                     subgroups.to(device))
    parts = component_seconds(setting, local, global_points, embed, logits,
                              max(args.reps // 2, 1), device)
    measured = {k: v.to(device) for k, v in random_batch(setting.measure_batch).items()}
    per_image = engine_step_seconds(setting, measured, "point", args.paper_reps, device) \
        / setting.measure_batch
    return summarise(setting, parts, per_image * setting.local_batch, None,
                     points=len(labels), crop=crop)


def summarise(setting: Setting, parts: dict, step: float, full: float | None, *, points: int,
              crop: int | None = None) -> dict:
    cfg = setting.cfg
    overhead = sum(parts.values())
    return {"setting": setting.name, "backbone": cfg.model.backbone,
            "crop": crop or cfg.data.crop_size, "local_batch": setting.local_batch,
            "global_batch": setting.global_batch, "measure_batch": setting.measure_batch,
            "classes": setting.num_classes, "global_points": points,
            "seconds": {**parts, "overhead": overhead, "step": step, "full_step": full},
            "share": overhead / step}


def main() -> None:
    args = parse_args()
    benchlib.setup_environment()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    benchlib.warn_if_busy()
    rows = []
    if "demo" in args.settings:
        with benchlib.phase("demo model"):
            rows.append(measure_demo(args, device))
    if "paper" in args.settings:
        with benchlib.phase("paper model"):
            rows.append(measure_paper(args, device))

    print(f"\n{args.threads} thread(s), {device.type}; mining + loss over the global batch's "
          "points; the paper-model step measured at batch "
          f"{args.paper_measure_batch} and scaled to the local batch\n")
    table = []
    for r in rows:
        s = r["seconds"]
        check = ("" if s["full_step"] is None else
                 f"{1e3 * s['full_step']:.0f} ({100 * (s['full_step'] / s['step'] - 1):+.1f}%)")
        table.append((f"{r['setting']}: {r['backbone']} {r['crop']} px, batch {r['local_batch']}"
                      f" of {r['global_batch']}", r["global_points"], f"{1e3 * s['extension']:.1f}",
                      f"{1e3 * s['sampling']:.1f}", f"{1e3 * s['mining_loss']:.1f}",
                      f"{1e3 * s['overhead']:.1f}", f"{1e3 * s['step']:.0f}",
                      f"**{100 * r['share']:.2f}%**", check or "n/a"))
    print(benchlib.markdown_table(
        ("setting", "global points", "extension (ms)", "sampling fwd+bwd (ms)",
         "mining + loss fwd+bwd (ms)", "total (ms)", "step fwd+bwd+opt (ms)", "share (target < 2%)",
         "cross-check: point+pdml+ext step (ms)"), table))
    path = benchlib.write_json("step_share", {"args": vars(args), "rows": rows}, quick=args.quick)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
