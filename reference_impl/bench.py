"""Benchmarks: ``python -m reference_impl bench data|train|speedrun [options] [--json]``.

Timings live here, never in pass/fail tests. With ``--json`` the last line printed is one JSON
object with the figures, so scripts and the README can quote them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

TARGETS = {}  # name -> function(args) -> dict; stages register theirs below


def bench_data(args) -> dict:
    """ShapesWorld images/s in one process on one thread (scene sampling + rendering)."""
    from .data.shapes import ShapesWorld, WorldConfig

    torch.set_num_threads(1)
    ds = ShapesWorld(WorldConfig(seed=args.seed), size=args.num_images, resolution=args.resolution)
    batch = list(range(min(256, args.num_images)))
    ds.__getitems__(batch)  # warm-up: allocator and code paths
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for start in range(0, args.num_images, args.batch_size):
            ds.__getitems__(list(range(start, min(start + args.batch_size, args.num_images))))
        best = min(best, time.perf_counter() - t0)
    return {"benchmark": "data", "dataset": "ShapesWorld", "resolution": args.resolution,
            "images": args.num_images, "batch_size": args.batch_size, "threads": 1,
            "seconds": round(best, 4), "images_per_s": round(args.num_images / best, 1)}


TARGETS["data"] = bench_data


def add_arguments(p):
    p.add_argument("target", choices=["data", "train", "speedrun"], help="what to measure")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--num-images", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="laptop", help="config for 'bench train'")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=20, help="timed steps for 'bench train'")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    sr = p.add_argument_group("speedrun (training/speedrun.py)")
    sr.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    sr.add_argument("--label", default=None, help="the change this run measures (record table)")
    sr.add_argument("--processes", type=int, default=None, help="ranks (default: one per core)")
    sr.add_argument("--no-record", action="store_true", help="do not append to the runs file")
    sr.add_argument("--render", action="store_true", help="rebuild docs/speedrun.md's table")
    sr.add_argument("--runs-file", default="docs/speedrun/runs.jsonl", help="where rows go")
    sr.add_argument("--evaluate", type=Path, default=None,
                    help="only measure this exported final/ folder against the bar")
    sr.add_argument("--sampler", choices=["ddim", "dpm"], default=None,
                    help="--evaluate with this sampler instead of the run's")
    sr.add_argument("--sample-steps", type=int, default=None, help="--evaluate: sampler steps")
    sr.add_argument("--guidance", type=float, default=None, help="--evaluate: guidance scale")
    sr.add_argument("--keep", type=Path, default=None,
                    help="keep each seed's run folder under this folder (seed<k>/)")


def main(args) -> int:
    if args.target == "train":
        from .training import benchmark  # the pre-training engine registers this target

        TARGETS["train"] = benchmark.bench_train
    if args.target == "speedrun":
        from .training import speedrun

        TARGETS["speedrun"] = speedrun.bench_speedrun
    result = TARGETS[args.target](args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v}")
    return 0
