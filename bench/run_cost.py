"""Every cost benchmark in sequence (what ``make bench`` runs), then a summary of the targets.

1. ``bench_pdml.py --threads 1``: vectorised mining + loss against the Algorithm-1 loops;
2. ``bench_step_share.py``: mining + loss + online extension as a share of a step (< 2%);
3. ``bench_ray_vs_torchrun.py``: Ray Train against torchrun DDP, median step (<= 1.05);
4. ``bench_store.py``: EmbeddingStore overhead per step (< 5%) and its round trip;
5. ``bench_memory_loader.py``: peak memory per worker, loader against step throughput;
6. ``bench_flops.py``: counted FLOPs and the expected V100 / H100 step times.

Each script prints its own table and writes ``bench/results/<name>.json``; this one
prints how long each took and whether each target was met. On an idle 2-core machine
the whole sequence is sized to finish within 15 minutes. A failing script does not stop
the others; the exit code is then 1.

    .venv/bin/python bench/run_cost.py [--quick] [--gpu]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from bench_flops import GPU_SETTINGS

HERE = Path(__file__).resolve().parent
BUDGET_S = 15 * 60


def commands(quick: bool, gpu: bool) -> list[tuple[str, list[str]]]:
    gpu_sets = [arg for setting in GPU_SETTINGS for arg in ("--set", setting)] if gpu else []
    plan = [
        ("pdml", ["bench_pdml.py", "--threads", "1"]),
        ("step_share", ["bench_step_share.py"]
         + (["--device", "cuda", "--threads", "8", "--paper-measure-batch", "8"] if gpu else [])),
        ("ray_vs_torchrun", ["bench_ray_vs_torchrun.py", *gpu_sets]),
        ("store", ["bench_store.py", *gpu_sets]),
        ("memory_loader", ["bench_memory_loader.py", *gpu_sets]
         + (["--loader-workers", "0", "4"] if gpu else [])),
        ("flops", ["bench_flops.py"]),
    ]
    if gpu:  # bench_pdml.py times the CPU only; bench_step_share.py covers the GPU
        plan = plan[1:]
    quick_flag = ["--quick"] if quick else []
    return [(name, [sys.executable, str(HERE / argv[0]), *argv[1:], *quick_flag])
            for name, argv in plan]


def load(name: str, quick: bool, done: set[str]) -> dict | None:
    """The JSON a script wrote in this invocation (none for a script that failed)."""
    path = benchlib.RESULTS / f"{name}{'-quick' if quick else ''}.json"
    return json.loads(path.read_text()) if name in done and path.is_file() else None


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def summary_rows(quick: bool, done: set[str]) -> list[tuple[str, str, str, str]]:
    rows = []
    if (pdml := load("pdml", quick, done)) is not None:
        for r in pdml["rows"]:
            speed_up = r["loop_s"] / r["mining_loss_s"]
            rows.append((f"Algorithm-1 loops / vectorised, {r['images']} images",
                         f"{speed_up:.0f}x", ">= 100x", verdict(speed_up >= 100)))
    if (share := load("step_share", quick, done)) is not None:
        for r in share["rows"]:
            rows.append((f"mining + loss + extension / step, {r['setting']} model",
                         f"{100 * r['share']:.2f}%", "< 2%", verdict(r["share"] < 0.02)))
    if (ray := load("ray_vs_torchrun", quick, done)) is not None:
        rows.append(("Ray Train / torchrun, median step", f"{ray['ratio_loop']:.3f}", "<= 1.05",
                     verdict(ray["ratio_loop"] <= 1.05)))
    if (store := load("store", quick, done)) is not None:
        direct = store["summary"]["overhead_direct"]
        rows.append(("EmbeddingStore time / step", f"{100 * direct:.1f}%", "< 5%",
                     verdict(direct < 0.05)))
    if (memory := load("memory_loader", quick, done)) is not None:
        for workers, per_rank in memory["runs"].items():
            ranks = list(per_rank.values())
            waits = [w for r in ranks for w in r["wait_seconds"]]
            steps = [s for r in ranks for s in r["step_seconds"]]
            share = sum(waits) / len(waits) / (sum(steps) / len(steps)) if steps else math.nan
            rows.append((f"data wait / step, loader_workers={workers}", f"{100 * share:.1f}%",
                         "loader never the bottleneck", "see table"))
            rows.append((f"peak RSS per worker, loader_workers={workers}",
                         f"{max(r['peak_rss_mb'] for r in ranks):.0f} MB", "", ""))
    if (flops := load("flops", quick, done)) is not None:
        for e in flops["estimates"]:
            seconds = " / ".join(f"{s:.3f}" for s in e["step_seconds"].values())
            utilisation = " / ".join(f"{100 * float(u):.0f}%" for u in e["step_seconds"])
            rows.append((f"expected step, {e['gpu']} {e['precision']} at {utilisation}",
                         f"{seconds} s", "", ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="every script with --quick: a validation run, not figures")
    parser.add_argument("--gpu", action="store_true",
                        help="on a node with 2 GPUs: the paper model on GPU workers")
    args = parser.parse_args()
    benchlib.setup_environment()
    benchlib.warn_if_busy()
    durations, failed = {}, []
    start = time.perf_counter()
    for name, command in commands(args.quick, args.gpu):
        shown = " ".join(Path(c).name if c.endswith(".py") else c for c in command[1:])
        print(f"\n=== {name}: {shown}", flush=True)
        tick = time.perf_counter()
        code = subprocess.run(command, cwd=benchlib.REPO).returncode
        durations[name] = time.perf_counter() - tick
        if code:
            failed.append(name)
            print(f"=== {name} FAILED with exit code {code}", flush=True)
    total = time.perf_counter() - start

    print("\n## Cost benchmarks: summary\n")
    print(benchlib.markdown_table(("benchmark", "seconds"),
                                  [*((n, f"{d:.0f}") for n, d in durations.items()),
                                   ("**total**", f"**{total:.0f}** (budget {BUDGET_S})")]))
    print(benchlib.markdown_table(("figure", "value", "target", "met"),
                                  summary_rows(args.quick, set(durations) - set(failed))))
    if failed:
        print(f"failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
