"""Experiment `data_parallel`: do two gloo processes train faster than one on a 2-core laptop?

Two arms train the laptop preset from the same seed on the same global batch:

  1 process    one process, 1 torch thread, global batch B
  2 processes  ``torchrun --standalone --nproc_per_node 2``, 1 thread each, B/2 per rank;
               DDP all-reduces the gradients (gloo) and each rank keeps its rows of the
               shared noise draws, so the two runs train the same model (docs/scaling.md)

Measured per arm: images per second from the median step time (the first ``warmup`` steps
excluded: allocation and the first all-reduce); the speed-up 2-proc / 1-proc; the share of a
2-process step a blocking all-reduce of the whole fp32 gradient takes (DDP overlaps its bucketed
all-reduces with the backward pass, so this bounds what communication could cost, not what it
did); and whether the final weights equal the one-process run's (bitwise, and the largest
difference). Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel
Training", arXiv 2006.15704, sec. 3.2 (bucketing) and 3.2.3 (overlap).

Both arms of a seed run one after the other inside one unit, holding the timing lock: a unit
never shares the cores with another timed unit.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..distributed.launch import torchrun
from ..evaluation.stats import decide, t_interval
from ..paths import cache_dir
from .allreduce import timing_lock
from .common import make_config, train_and_measure
from .runner import Arm, Experiment, Outcome, Row, Summary, constraint_row

TOL = 1e-5  # tests/test_ddp.py: the same sums in another order agree to 1e-5
SCALES = {
    "fast": {"resolutions": [16], "steps": 3, "global_batch": 8, "warmup": 1, "ar_repeats": 2},
    "full": {"resolutions": [16, 32], "steps": 24, "global_batch": 32, "warmup": 2,
             "ar_repeats": 5},
}


def units(settings: dict, seeds: list[int]) -> list[dict]:
    return [{"arm": f"{r} px", "resolution": r, "seed": s}
            for r in settings["resolutions"] for s in seeds]


def overrides(resolution: int, batch: int, steps: int) -> dict:
    return {"data.resolution": resolution, "train.batch_size": batch, "train.grad_accum": 1,
            "train.curriculum": [{"steps": steps, "resolution": resolution}],
            "train.log_every": 1, "train.warmup_steps": 1}


def train_timed(resolution: int, batch: int, steps: int, seed: int, out_dir: Path):
    """Train on this process (or this rank) through ``common.train_and_measure``; returns
    (trainer, per-step seconds). A step's time is read by the trainer's step hook: from the
    end of one step to the end of the next (so the first step, which pays for allocation, has
    no time of its own)."""
    ends = []
    cfg = make_config(overrides(resolution, batch, steps), seed=seed, name="data_parallel",
                      output_dir=out_dir)
    run = train_and_measure(cfg, [], keep_dir=True,
                            on_step=lambda trainer, rec: ends.append(time.perf_counter()))
    trainer = run["trainer"]
    shutil.rmtree(trainer.run_dir, ignore_errors=True)  # only the trainer in memory is used
    return trainer, np.diff(ends).tolist()


def run_unit(unit: dict, settings: dict) -> dict:
    res, seed, gb = unit["resolution"], unit["seed"], settings["global_batch"]
    work = Path(tempfile.mkdtemp(prefix="data_parallel-", dir=cache_dir("experiments", "_work")))
    try:
        with timing_lock():
            single, sec1 = train_timed(res, gb, settings["steps"], seed, work / "single")
            r = torchrun(2, "reference_impl.experiments.data_parallel",
                         [str(work), json.dumps({**settings, "resolution": res, "seed": seed})],
                         capture=True, timeout=1800)
            if r.returncode != 0:
                raise RuntimeError(f"data_parallel: torchrun failed: {r.stderr[-2000:]}")
        two = json.loads((work / "rank0.json").read_text())
        w2 = torch.load(work / "weights.pt", weights_only=True)
        w1 = single.raw_unet.state_dict()
        diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
        bitwise = all(torch.equal(w1[k], w2[k]) for k in w1)
        losses1 = [h["loss"] for h in single.history if "loss" in h]
        k = settings["warmup"]
        step1, step2 = float(np.median(sec1[k:])), float(np.median(two["seconds"][k:]))
        return {"img_s_1": gb / step1, "img_s_2": gb / step2, "speedup": step1 / step2,
                "step_s_1": step1, "step_s_2": step2, "allreduce_s": two["allreduce_s"],
                "allreduce_share": two["allreduce_s"] / step2, "grad_bytes": two["grad_bytes"],
                "max_weight_diff": diff, "bitwise_equal": bitwise,
                "losses_1": losses1, "losses_2": two["losses"],
                "max_loss_diff": max(abs(a - b) for a, b in zip(losses1, two["losses"])),
                "seconds_1": sec1, "seconds_2": two["seconds"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def worker(work: Path, settings: dict) -> None:
    """A torchrun rank: the same run with half the batch, then a timed gradient all-reduce."""
    import torch.distributed as dist

    trainer, seconds = train_timed(settings["resolution"], settings["global_batch"] // 2,
                                   settings["steps"], settings["seed"], work / "ddp")
    n = sum(p.numel() for p in trainer.raw_unet.parameters() if p.requires_grad)
    flat, times = torch.ones(n), []
    for _ in range(settings["ar_repeats"] + 1):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        times.append(time.perf_counter() - t0)
    if dist.get_rank() == 0:
        torch.save(trainer.raw_unet.state_dict(), work / "weights.pt")
        (work / "rank0.json").write_text(json.dumps({
            "seconds": seconds, "losses": [h["loss"] for h in trainer.history if "loss" in h],
            "allreduce_s": float(np.median(times[1:])), "grad_bytes": 4 * n}))


def summarize(s: Summary) -> Outcome:
    arms, rows = [], {}
    for u, o in zip(s.units, s.outputs):
        rows.setdefault(u["resolution"], []).append(o)
    for res, outs in rows.items():
        for key, name, metric in (("img_s_1", "1 process", "images/s"),
                                  ("img_s_2", "2 processes", "images/s"),
                                  ("speedup", "speed-up 2 vs 1", "ratio of images/s"),
                                  ("allreduce_share", "all-reduce share",
                                   "blocking all-reduce of the fp32 gradient / 2-proc step time"),
                                  ("max_weight_diff", "final weights |2 proc - 1 proc|",
                                   "max abs difference")):
            v = [o[key] for o in outs]
            lo, hi = t_interval(v)
            arms.append(Arm(f"{res} px: {name}", metric, float(np.mean(v)), lo, hi, n=len(v),
                            per_seed=v))
    top = max(rows)
    headline = next(a for a in arms if a.name == f"{top} px: speed-up 2 vs 1")
    same = all(o["max_weight_diff"] <= TOL for outs in rows.values() for o in outs)
    speedups = [a for a in arms if "speed-up" in a.name]
    if all(np.isfinite(a.lo) and np.isfinite(a.hi) for a in speedups):
        verdict, why = decide(min(a.lo for a in speedups), max(a.hi for a in speedups), 1.0,
                              "above", equivalence=0.05)
    else:  # one seed: no interval, no verdict
        verdict, why = "inconclusive", "fewer than 2 seeds: the speed-up has no interval"
    bitwise = sum(o["bitwise_equal"] for outs in rows.values() for o in outs)
    total = sum(len(outs) for outs in rows.values())
    why += (f"; final weights within {TOL} of one process in every run "
            f"(bitwise equal in {bitwise} of {total})" if same else "")
    figures = [plot(rows, s.figure_dir / "data_parallel.png")]
    worst = max(o["max_weight_diff"] for outs in rows.values() for o in outs)
    weights = Arm("final weights |2 proc - 1 proc|, worst run", "max abs difference (exact, "
                  "no sampling: the interval is the value)", worst, worst, worst, n=total,
                  n_what="runs", interval="exact")
    decided = [Row("2 processes train faster than 1", "claim", headline, EXPERIMENT.rule,
                   verdict, why),
               constraint_row(f"the same model: weights within {TOL} of one process", weights,
                              TOL, "below")]
    return Outcome(arms, headline, verdict, why, figures, rows=decided, details=
                   {"per_resolution": {str(r): outs for r, outs in rows.items()}})


def plot(rows: dict, path) -> str:
    from matplotlib.figure import Figure  # no pyplot: a lecture's inline backend stays as it is

    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    res = sorted(rows)
    x = np.arange(len(res))
    for k, (key, label) in enumerate((("img_s_1", "1 process, 1 thread"),
                                      ("img_s_2", "2 processes (torchrun), 1 thread each"))):
        v = [[o[key] for o in rows[r]] for r in res]
        ax.bar(x + (k - 0.5) * 0.38, [np.mean(a) for a in v], 0.36, label=label, color=f"C{k}")
        for i, a in enumerate(v):
            ax.plot([x[i] + (k - 0.5) * 0.38] * len(a), a, "k.", ms=4)
    ax.set_xticks(x, [f"{r} px" for r in res])
    ax.set_ylabel("training images / s")
    ax.set_title("laptop preset, same global batch: data parallel on 2 cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


EXPERIMENT = Experiment(
    name="data_parallel",
    claim="On a 2-core laptop, 2 gloo processes (1 thread each) train the same model faster "
          "than 1 process: data parallelism uses both cores.",
    rule="Per seed and resolution, speed-up = median step time of 1 process / of 2 processes "
         "(first steps excluded). Reproduced if the t 95% intervals (over seeds) of the speed-up "
         "at every resolution lie above 1 (their union's low end > 1); not reproduced if the "
         "union lies below 1 or within 1 +- 0.05; otherwise inconclusive. Whether both train "
         f"the same model is a row of its own: held if every run's final weights are within {TOL} "
         "of one process's.",
    lecture="07_scaling_out",
    anchor="Li et al. 2020 (arXiv 2006.15704): DDP's near-linear scaling; the issue's own "
           "measurement: 12.2 vs 23.9 img/s (1.96x) at 32 px, 24 steps, global batch 32",
    full_minutes=8.0, scales=SCALES, default_seeds={"fast": 1, "full": 3},
    units=units, run_unit=run_unit, summarize=summarize, version=2, rule_fixed="2026-12-08",
    gate_note="it measures step time and weight equality of the same training, not what the "
              "model learns: a model that cannot draw trains exactly as fast")


if __name__ == "__main__":  # a torchrun worker: data_parallel.py WORK SETTINGS_JSON
    worker(Path(sys.argv[1]), json.loads(sys.argv[2]))
