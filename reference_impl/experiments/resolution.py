"""Experiment 1 (lecture 01): what resolution costs, what a curriculum buys, and the
"1 billion blurry, 1 million sharp" finishing pass.

Three parts, one file, because they answer one question - where should pre-training compute go?

  cost        FLOPs per training image at 16, 32 and 64 px, *counted* (FlopCounterMode,
              training/throughput.py) - exact and machine-independent - and images/s, *measured*
              in one unit that interleaves the resolutions round by round, so the ratio is taken
              under one machine load. The seed's claim: 256 -> 1024 px costs 16x per image; here
              16 -> 64 px is the same pixel ratio.
  curriculum  at an equal budget of counted training FLOPs, 16 px then 32 px (data/curriculum.py)
              against 32 px throughout, both measured at 32 px. The issue says "equal wall-clock";
              wall-clock on a shared machine is noisy, so the budget is counted FLOPs (each arm's
              wall time is reported beside it). The data is all sharp here: this part isolates
              resolution. Practice: Stable Diffusion pre-trains at 256 then 512 px (Rombach et al.
              2022, arXiv 2112.10752), SDXL at 256 -> 512 -> 1024 px (Podell et al. 2023, arXiv
              2307.01952); neither publishes an equal-compute comparison.
  quality     at an equal number of steps (equal FLOPs: one resolution), a large mixed-quality bulk
              then a short sharp finishing pass (a curriculum stage with hq_fraction 1.0), against
              sharp-only and mixed-only. Faithful only if sharp data is *scarce*: the sharp set is a
              few hundred scenes (the bulk is 20 000, ~100:1), so sharp-only sees every image many
              times, while mixed-only never sees a clean majority. Measured against the sharp set:
              domain-FID (probe features) and sharpness (Laplacian variance, metrics.py) relative
              to the sharp data's.

The headline is the curriculum part. Its measure is the *attribute accuracy* at 32 px: the share
of the attributes each validation prompt names (kind, colour, size, count, background) that the
probe reads back from the sample. Decided before any run: at these budgets (a few hundred steps;
the laptop preset needs ~1200 steps of batch 32 for prompt accuracy 0.8) the all-attributes
prompt accuracy sits near its floor for both arms, while the per-attribute share moves early, so
it is the measure that can tell the arms apart. Prompt accuracy (all attributes, Wilson) and
domain-FID are reported as arms.

``details`` keys (for the lecture): "cost" {resolutions, flops_per_image {res: FLOPs},
images_per_s {res: [per round]}}; "curriculum" and "quality" {arm: [per seed: fid, prompt_acc,
attr_acc, train_s, steps, stages, final_loss_ema (+ flops, curriculum only)]}; "data_sharpness"
{sharp, bulk} (Laplacian variance of the training data); "secondary" {other arm: {verdict,
reason}} (the quality comparisons, same rule). Figures: cost.png, curriculum.png, quality.png,
samples.png (seed 0's first samples of every arm).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..data.captions import parse_caption
from ..data.curriculum import stage_dataset
from ..data.shapes import ShapesWorld, render, sample_scene
from ..evaluation import stats
from ..evaluation.metrics import sharpness_contrast
from ..models.unet import build_unet
from ..training.throughput import module_step_flops
from .bases import GATE_KEY, accuracy_gate
from .common import make_config, train_and_measure, validator
from .runner import Arm, Experiment, Outcome, Row, claim_row, size_row

CURRICULUM_ARMS = ("32px only", "16->32px curriculum")
QUALITY_ARMS = ("mixed only", "sharp only", "mixed then sharp")
SCALES = {
    "full": {"preset": "laptop", "batch_size": 16, "num_train": 20000, "lr": 2e-3,
             "warmup_share": 0.1, "eval": {"prompts": 48, "reference": 480, "sample_steps": 10},
             "cost": {"resolutions": [16, 32, 64], "rounds": 5, "steps": 2, "batch_size": 8},
             "curriculum": {"budget_steps_32px": 120, "low_res_share": 0.5},
             "quality": {"resolution": 16, "steps": 250, "finish_share": 0.25,
                         "bulk_hq_fraction": 0.3, "sharp_images": 200}},
    "fast": {"preset": "tiny", "batch_size": 4, "num_train": 2000, "lr": 2e-3,
             "warmup_share": 0.1, "eval": {"prompts": 6, "reference": 24, "sample_steps": 2},
             "cost": {"resolutions": [16, 32, 64], "rounds": 2, "steps": 1, "batch_size": 2},
             "curriculum": {"budget_steps_32px": 2, "low_res_share": 0.5},
             "quality": {"resolution": 16, "steps": 4, "finish_share": 0.25,
                         "bulk_hq_fraction": 0.3, "sharp_images": 16}},
}
GRID = 8  # samples of seed 0 kept per arm for the figure


# ------------------------------------------------------------------ cost
@functools.lru_cache(maxsize=16)
def flops_per_image(preset: str, resolution: int, text_dim: int = 384, tokens: int = 24) -> float:
    """Counted FLOPs (matmul/conv/attention; multiply-add = 2) of one training image through
    the UNet, forward + backward (throughput.py's convention, PaLM appendix B). Counted on a
    batch of 2 with caption states of ``tokens`` x ``text_dim``; weights do not change a count."""
    torch.manual_seed(0)
    unet = build_unet(preset, resolution, text_dim)
    x = torch.randn(2, 3, resolution, resolution)
    hidden = torch.randn(2, tokens, text_dim)
    t = torch.tensor([10, 500])
    total = module_step_flops(unet, x, t, hidden, loss_fn=lambda out: out.sample.square().mean())
    return total / 2


def run_cost(settings: dict, seed: int) -> dict:
    """Counted FLOPs per image and measured training images/s at each resolution.

    One run (a UNet is convolutional: the same weights train at any size) whose curriculum
    visits every resolution in turn, ``rounds`` times, so a change of machine load hits all
    resolutions alike and the per-round ratio cancels it. A step hook notes when each step
    ends. A stage of ``steps`` + 2 steps is timed from the end of its first step (untimed: it
    follows the stage's new data stream) to the end of its last-but-one (the last one also
    logs and checkpoints): ``steps`` steps of nothing but training.
    """
    c = settings["cost"]
    stages = [{"steps": c["steps"] + 2, "resolution": r}
              for _ in range(c["rounds"]) for r in c["resolutions"]]
    cfg = _config(settings, stages, seed, batch_size=c["batch_size"], hq_fraction=1.0)
    cfg.train.log_every = 10**6  # no log record inside a stage: only its last step writes one
    ends: dict[int, list[float]] = {}  # stage index -> when each of its steps ended

    def note(trainer, rec: dict) -> None:
        ends.setdefault(rec["stage"], []).append(time.perf_counter())

    train_and_measure(cfg, at_steps=[], on_step=note)
    ips: dict[str, list[float]] = {str(r): [] for r in c["resolutions"]}
    for i, stage in enumerate(stages):
        ips[str(stage["resolution"])].append(
            c["steps"] * c["batch_size"] / (ends[i][-2] - ends[i][0]))
    flops = {str(r): flops_per_image(settings["preset"], r, tokens=cfg.text.max_length)
             for r in c["resolutions"]}
    return {"flops_per_image": flops, "images_per_s": ips}


# ------------------------------------------------------------------ training arms
def _config(settings: dict, curriculum: list[dict], seed: int, batch_size: int | None = None,
            hq_fraction: float = 1.0):
    steps = sum(s["steps"] for s in curriculum)
    return make_config({
        "model.preset": settings["preset"], "train.batch_size": batch_size or settings["batch_size"],
        "train.curriculum": curriculum, "train.lr": settings["lr"],
        "train.warmup_steps": max(1, round(settings["warmup_share"] * steps)),
        "data.num_train": settings["num_train"], "data.world.hq_fraction": hq_fraction,
        "diffusion.sample_steps": settings["eval"]["sample_steps"]}, seed=seed, name="resolution")


def scarce_sharp_data(num_sharp: int):
    """A trainer ``dataset_fn``: a stage with hq_fraction 1.0 reads a *small* curated sharp set
    (``num_sharp`` scenes after the bulk's, so disjoint from it), as the million sharp images
    are a different, far smaller collection than the billion web ones; other stages read the
    bulk through the default curriculum.stage_dataset."""
    def dataset_fn(data_cfg, stage) -> ShapesWorld:
        if stage.hq_fraction == 1.0:
            world = dataclasses.replace(data_cfg.world, hq_fraction=1.0)
            return ShapesWorld(world, num_sharp, stage.resolution, start=data_cfg.num_train)
        return stage_dataset(data_cfg, stage)
    return dataset_fn


def curriculum_plan(settings: dict, arm: str) -> tuple[list[dict], dict]:
    """The arm's stages at an equal FLOP budget = budget_steps_32px steps at 32 px.

    The curriculum spends ``low_res_share`` of the budget at 16 px, where a step costs
    F16/F32 (~1/4, counted) of a 32 px step, so it takes F32/F16 times as many steps there.
    """
    c, b = settings["curriculum"], settings["batch_size"]
    f16 = flops_per_image(settings["preset"], 16)
    f32 = flops_per_image(settings["preset"], 32)
    budget = c["budget_steps_32px"]
    if arm == CURRICULUM_ARMS[0]:
        stages = [{"steps": budget, "resolution": 32}]
    else:
        low = max(1, round(c["low_res_share"] * budget * f32 / f16))
        stages = [{"steps": low, "resolution": 16},
                  {"steps": max(1, round((1 - c["low_res_share"]) * budget)), "resolution": 32}]
    flops = sum(s["steps"] * b * (f16 if s["resolution"] == 16 else f32) for s in stages)
    return stages, {"flops": flops, "budget_flops": budget * b * f32}


def quality_plan(settings: dict, arm: str) -> list[dict]:
    q = settings["quality"]
    r, n = q["resolution"], q["steps"]
    if arm == "mixed only":
        return [{"steps": n, "resolution": r}]
    if arm == "sharp only":
        return [{"steps": n, "resolution": r, "hq_fraction": 1.0}]
    finish = max(1, round(q["finish_share"] * n))
    return [{"steps": n - finish, "resolution": r},
            {"steps": finish, "resolution": r, "hq_fraction": 1.0}]


def train_arm(settings: dict, stages: list[dict], seed: int, hq_fraction: float,
              dataset_fn=None) -> dict:
    """Train one arm through its stages, then measure its EMA weights at the last resolution.
    Returns the measures plus training seconds (measurement excluded)."""
    cfg = _config(settings, stages, seed, hq_fraction=hq_fraction)
    res, ev = stages[-1]["resolution"], settings["eval"]
    # built outside no_grad: the first call may have to train the probe
    val = validator(res, ev["prompts"], ev["reference"])
    run = train_and_measure(cfg, at_steps=[], dataset_fn=dataset_fn,
                            measure_fn=lambda trainer, step: measure_samples(trainer, val, res))
    loss = [r["loss_ema"] for r in run["history"] if r.get("loss_ema") is not None]
    return {**run["measures"][-1], "train_s": run["seconds"], "steps": run["measures"][-1]["step"],
            "final_loss_ema": loss[-1] if loss else None}


def measure_samples(trainer, val, resolution: int) -> dict:
    """Domain-FID (probe features) against the sharp reference images of the validation
    prompts (``val``: a Validator), and per prompt: attribute accuracy, all-attributes correct,
    sharpness."""
    model = trainer.ema.shadow
    model.eval()
    images = trainer.sample_fn(resolution, model)(list(val.prompts), val.seed).clamp(-1, 1)
    m = val.measure(images)
    pred = val.probe.predict(images)
    attr, correct, kcb = [], [], []
    for i, p in enumerate(val.prompts):  # as metrics.prompt_accuracy, kept per prompt
        asked = parse_caption(p)
        asked["count"] = asked["count"] - 1 if "count" in asked else None
        hits = [int(pred[a][i]) == v for a, v in asked.items() if v is not None]
        attr.append(float(np.mean(hits)))
        correct.append(bool(all(hits)))
        kcb.append(bool(all(int(pred[a][i]) == asked[a] for a in ("kind", "colour", "background")
                            if asked.get(a) is not None)))
    sharp = [sharpness_contrast(images[i:i + 1])["sharpness"] for i in range(len(images))]
    grid = ((images[:GRID] + 1) * 127.5).round().to(torch.uint8).tolist()
    return {"fid": m["fid"], "fid_n": m["fid_n"], "fid_n_reference": m["fid_n_reference"],
            "prompt_acc": m["prompt_acc"], "attr_acc": attr, "correct": correct, "kcb": kcb,
            "sharpness": sharp,
            "reference_sharpness": sharpness_contrast(val.reference_images)["sharpness"],
            "grid": grid}


def data_sharpness(settings: dict) -> dict:
    """Mean sharpness of the training data itself: the sharp set and the mixed bulk."""
    q, n = settings["quality"], 256
    bulk = _world(settings, q["bulk_hq_fraction"])
    sharp = dataclasses.replace(bulk, hq_fraction=1.0)
    images = {k: render([sample_scene(w, i) for i in range(n)], q["resolution"]) * 2 - 1
              for k, w in (("sharp", sharp), ("bulk", bulk))}
    return {k: sharpness_contrast(v)["sharpness"] for k, v in images.items()}


def _world(settings: dict, hq: float):
    return make_config({"data.world.hq_fraction": hq}).data.world


# ------------------------------------------------------------------ the experiment
def units(settings: dict, seeds: list[int]) -> list[dict]:
    """Training arms first (the long ones), the timing unit last."""
    out = [{"arm": a, "seed": s} for s in seeds for a in CURRICULUM_ARMS]
    out += [{"arm": a, "seed": s} for s in seeds for a in QUALITY_ARMS]
    return out + [{"arm": "cost", "seed": seeds[0]}]


def run_unit(unit: dict, settings: dict) -> dict:
    arm, seed = unit["arm"], unit["seed"]
    if arm == "cost":
        return run_cost(settings, seed)
    if arm in CURRICULUM_ARMS:
        stages, budget = curriculum_plan(settings, arm)
        return {**train_arm(settings, stages, seed, hq_fraction=1.0), **budget, "stages": stages}
    if arm in QUALITY_ARMS:
        q = settings["quality"]
        out = train_arm(settings, quality_plan(settings, arm), seed, q["bulk_hq_fraction"],
                        scarce_sharp_data(q["sharp_images"]))
        return {**out, "stages": quality_plan(settings, arm), "data_sharpness": data_sharpness(settings)}
    raise ValueError(f"resolution: unknown arm {arm!r}; arms: {CURRICULUM_ARMS + QUALITY_ARMS + ('cost',)}")


RULE = ("Three rows, each with its own verdict. (1) Cost, no model enters: the measured time "
        "per training image at 64 px over 16 px lies above 1 (paired bootstrap over timing "
        "rounds), its size set against the pixel ratio 16 on a row of its own. (2) Curriculum, "
        "the headline: d = attribute accuracy at 32 px of the 16->32 px "
        "curriculum minus that of 32 px only, at equal counted training FLOPs, paired over "
        "(seed, prompt) cells (same seeds, same prompts, same sampling noise). Reproduced if the "
        "95% paired-bootstrap interval of d lies above 0; not reproduced if it lies below 0 or "
        "inside +-0.03 (no effect worth the name); inconclusive otherwise. The same rule, on "
        "domain-FID against the sharp set (t over seeds of paired differences, below 0 = better), "
        "decides (3), the finishing pass: 'mixed then sharp' against 'mixed only' (its "
        "comparison with 'sharp only' is reported beside it). Rows (2) and (3) need the gate: "
        "the 32 px only arm's kind+colour+background accuracy at 32 px.")


def _cells(outs: list[dict], key: str) -> np.ndarray:
    """Per-prompt values of all seeds, seed-major: (seeds x prompts,), paired across arms."""
    return np.concatenate([np.asarray(o[key], dtype=float) for o in outs])


def _mean_arm(name, metric, x, n_what="seed x prompt cells") -> Arm:
    lo, hi = stats.bootstrap_interval([x], np.mean)
    return Arm(name, metric, float(np.mean(x)), lo, hi, n=len(x), n_what=n_what, interval="bootstrap")


def _seed_arm(name, metric, values) -> Arm:
    return Arm(name, metric, stats.mean(values), *stats.t_interval(values), n=len(values),
               per_seed=[float(v) for v in values])


def _wilson_arm(name, metric, correct) -> Arm:
    k, n = int(np.sum(correct)), len(correct)
    lo, hi = stats.wilson_interval(k, n)  # min/max: at 0/n the bound is 0 up to float round-off
    return Arm(name, metric, k / n, min(lo, k / n), max(hi, k / n), n=n,
               n_what="seed x prompt cells", interval="Wilson")


def _diff_arm(name, metric, a, b) -> Arm:
    lo, hi = stats.bootstrap_interval([a, b], lambda u, v: float(np.mean(u) - np.mean(v)), paired=True)
    return Arm(name, metric, float(np.mean(a) - np.mean(b)), lo, hi, n=len(a),
               n_what="seed x prompt cells", interval="bootstrap (paired)")


def cost_arms(out: dict) -> list[Arm]:
    """Counted FLOP ratios (exact) and measured time ratios (bootstrap over timing rounds)."""
    flops, ips = out["flops_per_image"], {r: np.asarray(v) for r, v in out["images_per_s"].items()}
    base = min(flops, key=int)
    arms = [Arm(f"train images/s at {r} px", "measured training images/s (one torch thread)",
                float(v.mean()), *stats.t_interval(v), n=len(v), n_what="timing rounds",
                interval="t over rounds", per_seed=v.tolist()) for r, v in ips.items()]
    for r in flops:
        if r == base:
            continue
        f = flops[r] / flops[base]
        arms.append(Arm(f"FLOPs per image {r}/{base} px", "counted FLOPs ratio (pixel ratio "
                        f"{(int(r) / int(base)) ** 2:g})", f, f, f, n=1, n_what="count", interval="exact"))
        lo, hi = stats.bootstrap_interval([ips[base], ips[r]], stats.ratio_of_means, paired=True)
        arms.append(Arm(f"time per image {r}/{base} px", "measured ratio of images/s, same rounds",
                        stats.ratio_of_means(ips[base], ips[r]), lo, hi, n=len(ips[r]),
                        n_what="timing rounds", interval="bootstrap (paired)"))
    return arms


def summarize(s) -> Outcome:
    by = s.by_arm()
    cost = by["cost"][0]
    arms = cost_arms(cost)
    cur = {a: by[a] for a in CURRICULUM_ARMS}
    for a, outs in cur.items():
        arms += [_mean_arm(a, "attribute accuracy at 32 px", _cells(outs, "attr_acc")),
                 _wilson_arm(a, "prompt accuracy at 32 px (all attributes)", _cells(outs, "correct")),
                 _seed_arm(a, "domain-FID (probe features) at 32 px", [o["fid"] for o in outs]),
                 _seed_arm(a, "training wall seconds", [o["train_s"] for o in outs])]
    head = _diff_arm("curriculum - 32px only", "attribute accuracy at 32 px, difference at equal FLOPs",
                     _cells(cur[CURRICULUM_ARMS[1]], "attr_acc"), _cells(cur[CURRICULUM_ARMS[0]], "attr_acc"))
    arms.append(head)
    verdict, reason = stats.decide(head.lo, head.hi, 0.0, "above", equivalence=0.03)
    b = cur[CURRICULUM_ARMS[0]][0]
    reason += (f" (d = {head.value:+.3f}, n = {head.n} cells over {len(s.seeds)} seeds; budget "
               f"{b['budget_flops']:.3g} FLOPs per run)")
    qual = {a: by[a] for a in QUALITY_ARMS}
    for a, outs in qual.items():
        ratio = np.concatenate([np.asarray(o["sharpness"]) / o["reference_sharpness"] for o in outs])
        arms += [_seed_arm(a, "domain-FID (probe features) vs the sharp set", [o["fid"] for o in outs]),
                 _mean_arm(a, "sharpness / the sharp set's (Laplacian variance)", ratio),
                 _wilson_arm(a, "prompt accuracy (all attributes)", _cells(outs, "correct"))]
    secondary = {}
    finish = [o["fid"] for o in qual["mixed then sharp"]]
    for other in ("mixed only", "sharp only"):
        d = [f - o["fid"] for f, o in zip(finish, qual[other])]
        arm = _seed_arm(f"mixed then sharp - {other}", "domain-FID difference (below 0: finishing "
                        "pass better)", d)
        arms.append(arm)
        secondary[other] = dict(zip(("verdict", "reason"), stats.decide(arm.lo, arm.hi, 0.0, "below")))
    time_ratio = next(a for a in arms if a.name.startswith("time per image 64/"))
    finish_arm = next(a for a in arms if a.name == "mixed then sharp - mixed only")
    rows = [Row("curriculum: 16->32 px beats 32 px only at equal FLOPs", "claim", head,
                "reproduced if d's interval lies above 0; not reproduced below 0 or inside +-0.03",
                verdict, reason),
            dataclasses.replace(claim_row("cost: a 64 px image takes longer than a 16 px one",
                                          time_ratio, 1.0, "above"), gated=False),
            dataclasses.replace(size_row(time_ratio, 16.0, "pixel ratio"), gated=False),
            claim_row("finishing pass: mixed then sharp beats mixed only (domain-FID)",
                      finish_arm, 0.0, "below")]
    gate = float(np.mean(_cells(cur[CURRICULUM_ARMS[0]], "kcb")))
    figures = draw(s.figure_dir, cost, cur, qual, arms)
    details = {
        "cost": {"resolutions": sorted(int(r) for r in cost["flops_per_image"]),
                 "flops_per_image": cost["flops_per_image"], "images_per_s": cost["images_per_s"]},
        "curriculum": {a: _strip(outs) for a, outs in cur.items()},
        "quality": {a: _strip(outs) for a, outs in qual.items()},
        "data_sharpness": qual["mixed only"][0]["data_sharpness"],
        "secondary": secondary}
    return Outcome(arms, head, verdict, reason, figures, details, rows=rows,
                   gate_values={GATE_KEY: gate})


def _strip(outs: list[dict]) -> list[dict]:
    """What the lecture shows of each seed (no per-prompt lists, no pixels)."""
    keep = ("fid", "prompt_acc", "train_s", "steps", "flops", "stages", "final_loss_ema")
    return [{k: o[k] for k in keep if k in o} | {"attr_acc": float(np.mean(o["attr_acc"]))}
            for o in outs]


# ------------------------------------------------------------------ figures
def _bars(ax, arms: list[Arm], title: str, colours) -> None:
    x = np.arange(len(arms))
    v = np.array([a.value for a in arms], dtype=float)
    err = np.array([[max(0.0, a.value - a.lo), max(0.0, a.hi - a.value)]
                    if math.isfinite(a.lo) and math.isfinite(a.hi) else [0.0, 0.0] for a in arms]).T
    ax.bar(x, v, yerr=err, capsize=4, color=colours[:len(arms)])
    for i, a in enumerate(arms):
        if a.per_seed:
            ax.plot([i] * len(a.per_seed), a.per_seed, "k.", ms=5)
    ax.set_xticks(x, [a.name for a in arms], fontsize=8)
    ax.set_title(f"{title}\n(n={arms[0].n} {arms[0].n_what}, 95% {arms[0].interval})", fontsize=9)


def draw(fig_dir: Path, cost: dict, cur: dict, qual: dict, arms: list[Arm]) -> list[str]:
    # matplotlib's Figure without pyplot: no backend is switched, so a notebook that runs the
    # experiment keeps drawing its own figures inline
    from matplotlib.figure import Figure

    def subplots(*shape, figsize):
        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*shape)

    def pick(names, metric):
        return [a for a in arms if a.name in names and a.metric.startswith(metric)]

    flops, ips = cost["flops_per_image"], cost["images_per_s"]
    res = sorted(flops, key=int)
    fig, ax = subplots(figsize=(6, 4))
    x = np.arange(len(res))
    ax.bar(x - 0.2, [flops[r] / flops[res[0]] for r in res], 0.4, label="counted FLOPs (exact)")
    ax.bar(x + 0.2, [np.mean(ips[res[0]]) / np.mean(ips[r]) for r in res], 0.4,
           label="measured time (this machine)")
    ax.plot(x, [(int(r) / int(res[0])) ** 2 for r in res], "k_", ms=30, mew=2, label="pixel ratio")
    ax.set(yscale="log", xticks=x, xticklabels=[f"{r} px" for r in res],
           ylabel=f"cost per training image / {res[0]} px", title="What a training image costs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_dir / "cost.png", dpi=120)

    colours = ["#9ecae1", "#3182bd", "#fdae6b"]
    fig, axes = subplots(1, 3, figsize=(12, 3.8))
    for ax, metric in zip(axes, ("attribute accuracy", "prompt accuracy", "domain-FID")):
        _bars(ax, pick(CURRICULUM_ARMS, metric), metric + " at 32 px", colours)
    fig.suptitle("Equal training FLOPs: 32 px throughout vs 16 px then 32 px")
    fig.tight_layout()
    fig.savefig(fig_dir / "curriculum.png", dpi=120)

    fig, axes = subplots(1, 3, figsize=(12, 3.8))
    for ax, metric in zip(axes, ("domain-FID", "sharpness", "prompt accuracy")):
        _bars(ax, pick(QUALITY_ARMS, metric), metric, colours)
    data = qual["mixed only"][0]["data_sharpness"]
    axes[1].axhline(1.0, color="k", lw=1, label="sharp data")
    axes[1].axhline(data["bulk"] / data["sharp"], color="k", ls="--", lw=1, label="mixed bulk data")
    axes[1].legend(fontsize=7)
    fig.suptitle("1 billion blurry, 1 million sharp: equal steps, scarce sharp set")
    fig.tight_layout()
    fig.savefig(fig_dir / "quality.png", dpi=120)

    groups = {**cur, **qual}
    fig, axes = subplots(1, len(groups), figsize=(2.6 * len(groups), 2.2))
    for ax, (a, outs) in zip(axes, groups.items()):
        g = torch.tensor(outs[0]["grid"], dtype=torch.uint8)  # seed 0's first samples
        row = torch.cat(list(g.permute(0, 2, 3, 1)), dim=1)
        ax.imshow(row.numpy(), interpolation="nearest")
        ax.set_title(a, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(fig_dir / "samples.png", dpi=120)
    return ["cost.png", "curriculum.png", "quality.png", "samples.png"]


EXPERIMENT = Experiment(
    name="resolution",
    claim=("Low-resolution pre-training is cheap - a 64 px image costs ~16x a 16 px one, as "
           "1024 px does 256 px - so at an equal compute budget a 16->32 px curriculum beats "
           "training at 32 px throughout, and a sharp finishing pass repairs a blurry bulk."),
    rule=RULE,
    lecture="01_curriculum",
    anchor=("(1024/256)^2 = 16x pixels per image (the seed); SD trains 256 then 512 px (Rombach "
            "et al. 2022, arXiv 2112.10752), SDXL 256->512->1024 px (Podell et al. 2023, arXiv "
            "2307.01952); no published equal-compute number"),
    full_minutes=8.0,
    scales=SCALES,
    default_seeds={"fast": 1, "full": 2},
    units=units, run_unit=run_unit, summarize=summarize, version=2, rule_fixed="2026-12-08",
    gates=(accuracy_gate("32px only arm (the curriculum's control)",
                         "at 32 px, on the scale's eval prompts"),))
