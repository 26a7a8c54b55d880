"""Experiment `allreduce`: the ring sends 2(N-1)/N * S bytes per rank, and alpha-beta explains its time.

Two units:

  simulation  ``simulate_ring_all_reduce`` (distributed/allreduce.py) on N = 2..8 simulated
              ranks and awkward sizes (fewer elements than ranks, primes, divisible ones):
              every rank's counted bytes against the exact count and against 2(N-1)/N * S,
              and every result against the sum.
  gloo        N = 2..4 real processes (``torchrun``, gloo over loopback), one world after the
              other: ``ring_all_reduce`` (our ring, point-to-point isend/irecv) and gloo's own
              ``dist.all_reduce`` timed on float32 messages from 4 B to 16 MB, ``repeats``
              times each (a step's time is the slowest rank's: a collective ends when its last
              rank does); bytes sent counted from the real sends.

The alpha-beta model (distributed/cost_model.py; Thakur et al. 2005, Patarasuk & Yuan 2009),
``T = 2(N-1) alpha + 2(N-1)/N S beta``, is fitted to the ring's median times; its interval is
a bootstrap over the repeats. It is then extrapolated to 8, 64 and 1,000 ranks (ring vs tree,
latency vs bandwidth term, the bucket size where bandwidth dominates), once with the laptop's
alpha and beta and once with the bandwidth of the published anchor: nccl-tests' ~370 GB/s bus
bandwidth for a ring all-reduce on 8xH100 NVLink (busbw = algbw * 2(N-1)/N).

Timing needs the cores to itself: the gloo unit holds a lock that other timing units of the
course (zero, data_parallel) also take, and the experiment must run alone (the heavy lock).
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..distributed import cost_model as cm
from ..distributed.allreduce import (
    chunk_sizes,
    ring_all_reduce,
    ring_bytes_formula,
    ring_bytes_sent,
    simulate_ring_all_reduce,
)
from ..distributed.launch import torchrun
from ..evaluation.stats import bootstrap_interval
from ..paths import build_lock, cache_dir
from .runner import Arm, Experiment, Outcome, Summary

NCCL_H100_BUSBW = 370e9  # bytes/s: ring all-reduce, 8xH100 NVLink, large messages (nccl-tests)
# Not measured here and not a published figure: an assumed per-hop latency of the order of
# NCCL's small-message latency on NVLink, so the H100 table has a latency term at all
ASSUMED_NVLINK_ALPHA = 5e-6
DDP_BUCKET = 25 * 2**20  # torch DDP's default bucket_cap_mb = 25
R2_MIN = 0.9  # the model must explain 90% of the variance of log t
SCALES = {
    "fast": {"sim_worlds": [2, 3, 5, 8], "sim_numels": [1, 7, 24, 1001],
             "gloo_worlds": [2], "gloo_numels": [1, 4096, 65536], "repeats": 3, "warmup": 1,
             "extrapolate": [8, 64, 1000], "gradient_params": 200e6},
    "full": {"sim_worlds": [2, 3, 4, 5, 6, 7, 8], "sim_numels": [1, 3, 7, 24, 1001, 65536, 1_000_003],
             "gloo_worlds": [2, 3, 4], "gloo_numels": [1, 16, 256, 4096, 65536, 2**18, 2**20, 2**22],
             "repeats": 9, "warmup": 2, "extrapolate": [8, 64, 1000], "gradient_params": 200e6},
}


def timing_lock():
    """Held while a unit times something: two timed units never share the cores."""
    return build_lock(cache_dir("experiments") / "timing")


def units(settings: dict, seeds: list[int]) -> list[dict]:
    return [{"arm": "simulation", "seed": 0}, {"arm": "gloo", "seed": 0}]


# ------------------------------------------------------------------ the units
def simulate(settings: dict) -> dict:
    rows = []
    for n in settings["sim_worlds"]:
        for numel in settings["sim_numels"]:
            g = torch.Generator().manual_seed(n * 1_000_003 + numel)
            xs = [torch.randint(-8, 9, (numel,), generator=g).float() for _ in range(n)]
            results, messages, sent = simulate_ring_all_reduce(xs)
            total = torch.stack(xs).sum(0)
            rows.append({"n": n, "numel": numel, "bytes": numel * 4, "sent": sent,
                         "exact": [ring_bytes_sent(numel, 4, n, r) for r in range(n)],
                         "formula": ring_bytes_formula(numel * 4, n),
                         "sum_ok": all(torch.equal(r, total) for r in results),
                         "messages": len(messages), "chunks": chunk_sizes(numel, n)})
    return {"rows": rows}


def run_gloo(settings: dict) -> dict:
    worlds = []
    with timing_lock():
        for n in settings["gloo_worlds"]:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "rank0.json"
                r = torchrun(n, "reference_impl.experiments.allreduce",
                             [str(out), json.dumps(settings)], capture=True, timeout=900)
                if r.returncode != 0:
                    raise RuntimeError(f"gloo world of {n} failed: {r.stderr[-2000:]}")
                worlds.append(json.loads(out.read_text()))
    return {"worlds": worlds}


def run_unit(unit: dict, settings: dict) -> dict:
    return simulate(settings) if unit["arm"] == "simulation" else run_gloo(settings)


def worker(out: Path, settings: dict) -> None:
    """One rank of a gloo world (run by torchrun): time both all-reduces on every size."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, n = dist.get_rank(), dist.get_world_size()
    rows = []
    for numel in settings["gloo_numels"]:
        for algo in ("ring", "gloo"):
            times, sent = [], None
            for k in range(settings["warmup"] + settings["repeats"]):
                x = torch.full((numel,), float(rank + 1))
                dist.barrier()  # everyone starts together
                t0 = time.perf_counter()
                if algo == "ring":
                    sent = ring_all_reduce(x)
                else:
                    dist.all_reduce(x)
                dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
                dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # the collective ends with its last rank
                assert x[0].item() == n * (n + 1) / 2, f"{algo} all-reduce gave a wrong sum"
                if k >= settings["warmup"]:
                    times.append(dt.item())
            sent_all = [torch.zeros(1, dtype=torch.int64) for _ in range(n)]
            dist.all_gather(sent_all, torch.tensor([sent or 0]))
            rows.append({"algo": algo, "numel": numel, "bytes": numel * 4, "times": times,
                         "sent": [int(s.item()) for s in sent_all] if algo == "ring" else None})
    if rank == 0:
        out.write_text(json.dumps({"n": n, "rows": rows}))
    dist.destroy_process_group()


# ------------------------------------------------------------------ the summary
def _ring_points(worlds: list[dict], pick=np.median):
    """(n, bytes, seconds) arrays of the ring's times, one point per (N, size)."""
    pts = [(w["n"], r["bytes"], pick(r["times"])) for w in worlds for r in w["rows"]
           if r["algo"] == "ring"]
    return tuple(np.array(x, dtype=float) for x in zip(*pts))


def _fit_from_repeats(worlds: list[dict], idx: np.ndarray) -> dict:
    """The fit on the median of the repeats ``idx`` (a bootstrap resample)."""
    pts = [(w["n"], r["bytes"], float(np.median(np.asarray(r["times"])[idx]))) for w in worlds
           for r in w["rows"] if r["algo"] == "ring"]
    n, s, t = (np.array(x, dtype=float) for x in zip(*pts))
    return cm.fit_alpha_beta(n, s, t)


def summarize(s: Summary) -> Outcome:
    by = {u["arm"]: o for u, o in zip(s.units, s.outputs)}
    sim, worlds = by["simulation"]["rows"], by["gloo"]["worlds"]
    # bytes: the simulation and the real sends
    sim_exact = all(r["sent"] == r["exact"] for r in sim) and all(r["sum_ok"] for r in sim)
    sim_formula = [max(abs(b - r["formula"]) for b in r["sent"]) / max(r["bytes"], 1)
                   for r in sim if r["numel"] % r["n"] == 0]
    gloo_rows = [(w["n"], r) for w in worlds for r in w["rows"] if r["algo"] == "ring"]
    gloo_exact = all(r["sent"] == [ring_bytes_sent(r["numel"], 4, n, k) for k in range(n)]
                     for n, r in gloo_rows)
    bytes_ok = sim_exact and gloo_exact and all(d == 0 for d in sim_formula)
    # the cost model, with a bootstrap over repeats
    n_arr, s_arr, t_arr = _ring_points(worlds)
    fit = cm.fit_alpha_beta(n_arr, s_arr, t_arr)
    reps = len(worlds[0]["rows"][0]["times"])
    rng = np.random.default_rng(0)
    boots = [_fit_from_repeats(worlds, rng.integers(0, reps, reps)) for _ in range(200)]
    a_lo, a_hi = np.percentile([b["alpha"] for b in boots], [2.5, 97.5])
    b_lo, b_hi = np.percentile([b["beta"] for b in boots], [2.5, 97.5])
    # measured bus bandwidth of the largest message, per N and algorithm
    busbw = []
    for w in worlds:
        big = max(r["bytes"] for r in w["rows"])
        for r in w["rows"]:
            if r["bytes"] == big:
                bw = [cm.bus_bandwidth(w["n"], big, t) for t in r["times"]]
                lo, hi = bootstrap_interval([np.array(bw)], lambda x: float(np.median(x)))
                busbw.append(Arm(f"bus bandwidth, {r['algo']}, N={w['n']}, {big / 2**20:.3g} MiB",
                                 "GB/s (busbw = S/t * 2(N-1)/N), median", float(np.median(bw)) / 1e9,
                                 lo / 1e9, hi / 1e9, n=len(bw), n_what="repeats",
                                 interval="bootstrap", per_seed=[b / 1e9 for b in bw]))
    arms = [
        Arm("simulation: exact bytes", "share of (N, size, rank) whose counted bytes equal the "
            "exact count", float(sim_exact), n=sum(r["n"] for r in sim), n_what="rank-cases",
            interval="exact"),
        Arm("gloo: exact bytes", "share of (N, size, rank) whose real sends equal the exact count",
            float(gloo_exact), n=sum(n for n, _ in gloo_rows), n_what="rank-cases", interval="exact"),
        Arm("alpha (latency per message)", "microseconds, fitted", fit["alpha"] * 1e6,
            a_lo * 1e6, a_hi * 1e6, n=reps, n_what="repeats", interval="bootstrap"),
        # a resample whose beta reaches 0 or below leaves the bandwidth unbounded above
        Arm("1/beta (link bandwidth)", "GB/s, fitted", 1e-9 / fit["beta"],
            1e-9 / b_hi if b_hi > 0 else math.nan, 1e-9 / b_lo if b_lo > 0 else math.inf,
            n=reps, n_what="repeats", interval="bootstrap"),
        Arm("model fit R^2 (log t)", "R^2 of log time, ring, all N and sizes", fit["r2_log"],
            n=len(t_arr), n_what="(N, size) points", interval="none"),
        *busbw,
    ]
    headline = arms[3]
    anchor_ratio = NCCL_H100_BUSBW * fit["beta"]
    if not bytes_ok:
        verdict, why = "not reproduced", "a rank's bytes differ from the exact count"
    elif fit["r2_log"] >= R2_MIN and b_lo > 0 and a_lo > 0:
        verdict, why = "reproduced", (f"bytes exact everywhere; alpha-beta explains "
                                      f"R^2 = {fit['r2_log']:.3f} of log t, alpha and beta > 0")
    elif fit["r2_log"] < R2_MIN and b_lo > 0:
        verdict, why = "not reproduced", f"bytes exact, but the model explains only R^2 = {fit['r2_log']:.3f}"
    else:
        verdict, why = "inconclusive", "bytes exact; alpha or beta's interval reaches 0"
    if fit["beta"] > 0:
        why += (f"; the laptop's gloo loopback moves {1e-9 / fit['beta']:.2f} GB/s per link, "
                f"{anchor_ratio:.0f}x less than NCCL's ~370 GB/s busbw on 8xH100 NVLink")
    else:  # timing noise on a busy machine can tilt a short fit below zero
        why += "; the fitted beta is not positive, so no bandwidth or extrapolation is derived"
    # diagnostic, not part of the rule: the model fitted to each world alone. More processes
    # than cores share them, and a rank waiting for a message is then scheduled late
    per_world = {}
    for w in worlds:
        pts = [(w["n"], r["bytes"], float(np.median(r["times"]))) for r in w["rows"] if r["algo"] == "ring"]
        wn, ws, wt = (np.array(x, dtype=float) for x in zip(*pts))
        per_world[str(w["n"])] = cm.fit_alpha_beta(wn, ws, wt)
    why += "; fitted per world: " + ", ".join(
        f"N={k}: alpha {v['alpha'] * 1e6:.0f} us, R^2 {v['r2_log']:.2f}" for k, v in per_world.items())
    tables = extrapolation(fit, s.settings)
    figures = [plot_times(worlds, fit, s.figure_dir / "allreduce_time.png"),
               plot_bytes(sim, s.figure_dir / "allreduce_bytes.png"),
               plot_extrapolation(tables, s.figure_dir / "allreduce_extrapolation.png")]
    return Outcome(arms, headline, verdict, why, figures,
                   {"fit": fit, "fit_per_world": per_world, "simulation": sim, "worlds": worlds, "extrapolation": tables,
                    "formula_rel_error": sim_formula, "anchor_busbw": NCCL_H100_BUSBW})


def extrapolation(fit: dict, settings: dict) -> dict:
    """Ring vs tree at 8, 64, 1000 ranks: the laptop's alpha/beta, and the anchor's beta.

    Sizes: one DDP bucket (25 MiB) and a whole fp32 gradient of ``gradient_params`` parameters.
    The anchor gives no alpha: the H100 rows use ASSUMED_NVLINK_ALPHA (an assumption).
    """
    sizes = [DDP_BUCKET, 4 * settings["gradient_params"]]
    gpus = settings["extrapolate"]
    # a fit with alpha or beta <= 0 is not a network: nothing to extrapolate from it
    physical = fit["alpha"] > 0 and fit["beta"] > 0
    laptop = cm.extrapolate(gpus, sizes, fit["alpha"], fit["beta"]) if physical else []
    h100 = cm.extrapolate(gpus, sizes, ASSUMED_NVLINK_ALPHA, 1 / NCCL_H100_BUSBW)
    return {"sizes": sizes, "gpus": gpus, "laptop": laptop, "h100_bandwidth": h100,
            "h100_alpha_assumed": ASSUMED_NVLINK_ALPHA}


# ------------------------------------------------------------------ figures
def plot_times(worlds, fit, path) -> str:
    from matplotlib.figure import Figure  # no pyplot: a lecture's inline backend stays as it is

    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for k, w in enumerate(worlds):
        for algo, mk in (("ring", "o-"), ("gloo", "x--")):
            rows = [r for r in w["rows"] if r["algo"] == algo]
            x = [r["bytes"] for r in rows]
            ax.plot(x, [np.median(r["times"]) for r in rows], mk, color=f"C{k}",
                    label=f"N={w['n']}, {'our ring' if algo == 'ring' else 'gloo all_reduce'}")
        if fit["alpha"] > 0 and fit["beta"] > 0:  # no curve from a fit that is not a network
            xs = np.geomspace(4, max(r["bytes"] for r in w["rows"]), 50)
            ax.plot(xs, [cm.ring_time(w["n"], x, fit["alpha"], fit["beta"]) for x in xs], ":",
                    color=f"C{k}", alpha=0.6)
    ax.set(xscale="log", yscale="log", xlabel="message size (bytes)", ylabel="seconds (median)",
           title="all-reduce time on gloo (dotted: fitted alpha-beta)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def plot_bytes(sim, path) -> str:
    from matplotlib.figure import Figure  # no pyplot: a lecture's inline backend stays as it is

    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    big = max(r["numel"] for r in sim)
    rows = [r for r in sim if r["numel"] == big]
    ns = [r["n"] for r in rows]
    ax.plot(ns, [max(r["sent"]) / r["bytes"] for r in rows], "o", label="counted (max over ranks)")
    ax.plot(ns, [2 * (n - 1) / n for n in ns], "-", label="2(N-1)/N")
    ax.plot(ns, [n - 1 for n in ns], "--", label="naive: one root receives (N-1) S")
    ax.set(xlabel="ranks N", ylabel="bytes sent per rank / S", yscale="log",
           title=f"ring all-reduce traffic, simulated, S = {big * 4:,} B")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def plot_extrapolation(tables, path) -> str:
    from matplotlib.figure import Figure  # no pyplot: a lecture's inline backend stays as it is

    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2, sharey=False)
    for ax, key, title in ((axes[0], "laptop", "laptop alpha, beta"),
                           (axes[1], "h100_bandwidth", "assumed 5 us alpha, NVLink beta (370 GB/s)")):
        rows = [r for r in tables[key] if r["bytes"] == tables["sizes"][0]]
        if not rows:
            ax.set_title(f"{title}: no physical fit (alpha or beta <= 0)")
            ax.axis("off")
            continue
        g = [r["gpus"] for r in rows]
        ax.plot(g, [r["ring_latency_s"] for r in rows], "o-", label="ring: latency term")
        ax.plot(g, [r["ring_bandwidth_s"] for r in rows], "s-", label="ring: bandwidth term")
        ax.plot(g, [r["tree_s"] for r in rows], "^--", label="tree (total)")
        ax.set(xscale="log", yscale="log", xlabel="ranks", ylabel="seconds per 25 MiB bucket",
               title=title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


EXPERIMENT = Experiment(
    name="allreduce",
    claim="A ring all-reduce makes every rank send 2(N-1)/N * S bytes, almost independent of N, "
          "and its time follows the alpha-beta model 2(N-1) alpha + 2(N-1)/N S beta.",
    rule="Not reproduced if any rank's counted bytes (simulated N=2..8, or real gloo sends "
         "N=2..4) differ from the exact count, or from 2(N-1)/N * S when N divides the size. "
         f"Otherwise reproduced if the alpha-beta fit to the ring's median times explains "
         f"R^2 >= {R2_MIN} of log t and the bootstrap 95% intervals (over repeats) of alpha and "
         "beta lie above 0; not reproduced if R^2 < 0.9; else inconclusive.",
    lecture="07_scaling_out",
    anchor="~370 GB/s bus bandwidth (busbw = algbw * 2(N-1)/N) for NCCL ring all-reduce on "
           "8xH100 NVLink (nccl-tests); Patarasuk & Yuan 2009: 2(N-1)/N * S is optimal",
    full_minutes=3.0, scales=SCALES, default_seeds={"fast": 1, "full": 1},
    units=units, run_unit=run_unit, summarize=summarize, version=1, rule_fixed="2026-12-02",
    gate_note="it measures a network (bytes sent, seconds per all-reduce), not a model: there "
              "is no baseline that must first learn something")


if __name__ == "__main__":  # a torchrun worker: allreduce.py OUT SETTINGS_JSON
    worker(Path(sys.argv[1]), json.loads(sys.argv[2]))
