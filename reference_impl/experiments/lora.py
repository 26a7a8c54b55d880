"""Experiment `lora`: a brand's look from 50 images, with a LoRA adapter or full fine-tuning.

LoRA (Hu et al. 2021, arXiv 2106.09685, eq. 3: h = W0 x + (alpha / r) B A x) trains two thin
matrices per targeted layer and leaves the base frozen. Here the shared SFT base
(``alignment_base.sft_model``, which never saw the brand look: the web has ``brand_fraction``
0) learns the brand style (pastel fill, navy outline, caption "... in the brand style") from 50
brand images, with adapters of rank 1, 4 and 16 and with full fine-tuning, each arm its own
recipe (``RECIPES``), trained by the pipeline's LoRA pass (``adapters.lora.train_lora``, the
recipe as ``lora.*`` overrides) and measured through its adapter file. Measured per arm and seed:

  brand rate      share of held-out brand prompts (none of the 50 training captions) whose
                  sample the evaluation probe's style head reads as the brand style
  leak            the same share on plain prompts (no brand phrase): the look should not spread
  prompt acc      plain prompts, every named attribute read back by the probe (forgetting),
                  with the adapter merged (``merge_lora``) and after ``unmerge_lora`` (the base
                  again, for LoRA), against the base model
  cost            trainable parameters, adapter MB on disk, training seconds (reported only)

The "pipeline" arm is the pipeline's preset at the time of writing (rank 4, attention only,
alpha = rank, lr 1e-3, 60 steps of 16); the "r4_attention" arm is the chosen recipe with the
attention-only targets, which separates the effect of the layers from that of steps and lr.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ..evaluation.stats import decide, t_interval, wilson_interval
from . import alignment_base as base
from .runner import Arm, Experiment, Gate, Outcome, Summary

# rank None: full fine-tuning. Each recipe was chosen before the full run (see the lecture).
CHOSEN = {"targets": "attention_conv", "lr": 3e-3, "steps": 60, "batch_size": 16}
RECIPES = {
    "pipeline": {"rank": 4, "targets": "attention", "lr": 1e-3, "steps": 60, "batch_size": 16},
    "r4_attention": {**CHOSEN, "rank": 4, "targets": "attention"},
    "r1": {**CHOSEN, "rank": 1},
    "r4": {**CHOSEN, "rank": 4},
    "r16": {**CHOSEN, "rank": 16},
    "full": {"rank": None, "lr": 2e-4, "steps": 60, "batch_size": 16},
}
ARMS = ("base",) + tuple(RECIPES)


def units(settings: dict, seeds: list[int]) -> list[dict]:
    return [{"arm": a, "seed": s} for a in ARMS for s in seeds]


def brand_set(st: dict):
    """The 50 brand images: the base's world through the pipeline's own brand set."""
    from ..adapters.lora import brand_images

    return brand_images(base._world(st), st["num_images"], st["resolution"])


def eval_prompts(st: dict, ds) -> tuple[list[str], list[str]]:
    """(held-out brand prompts, plain prompts): fixed across arms and seeds."""
    from ..alignment.preferences import random_prompts

    train = {ds[i]["caption"] for i in range(len(ds))}
    brand = random_prompts(st["num_prompts"], seed=st["eval_seed"], exclude=train, brand=True)
    plain = random_prompts(st["num_prompts"], seed=st["eval_seed"] + 1)
    return brand, plain


def base_dir(st: dict) -> Path:
    """The model the brand is taught to: the shared SFT base, or ``st["base_dir"]`` (a final/
    folder, e.g. the pipeline's model, to check a recipe at the pipeline's resolution)."""
    return Path(st["base_dir"]) if st.get("base_dir") else base.sft_model(st)


def _train(st: dict, recipe: dict, seed: int, ds, work: Path):
    """Fine-tune the base's EMA on ``ds``: the pipeline's LoRA pass (``adapters.lora.train_lora``)
    with the recipe as ``lora.*`` overrides, its adapter file loaded back into a fresh base (what
    a user of the file gets); rank None, the same run config with no adapter (every weight
    trains). Returns (unet with the adapter unmerged, stats)."""
    from ..adapters import lora as L
    from ..models.exported import load_unet
    from ..training.finetune import fine_tune

    rank, steps = recipe["rank"], st.get("steps") or recipe["steps"]
    sets = {"lora.steps": steps, "lora.lr": recipe["lr"], "lora.batch_size": recipe["batch_size"]}
    if rank is None:
        cfg = base.config(st, "lora-None", seed=seed, **sets)
        t0 = time.perf_counter()
        trainer = fine_tune(L.lora_run_config(cfg, work, len(ds)), base_dir(st), ds, progress=False)
        stats = L.trainable_stats(trainer.raw_unet)
        return trainer.raw_unet.eval(), {"trainable": stats["trainable"], "steps": trainer.step,
                                         "train_seconds": time.perf_counter() - t0,
                                         "adapter_mb": stats["trainable_mb"]}  # the whole UNet
    cfg = base.config(st, f"lora-{rank}", seed=seed, **sets, **{
        "lora.rank": rank, "lora.alpha": recipe.get("alpha"), "lora.targets": recipe["targets"]})
    stats = L.train_lora(cfg, base_dir(st), ds, work, progress=False, seed=seed)
    unet = load_unet(base_dir(st), "ema")
    L.load_lora(unet, work / "adapter")
    return unet.eval(), {"trainable": stats["trainable_params"], "steps": stats["steps"],
                         "train_seconds": stats["train_seconds"], "adapter_mb": stats["adapter_mb"]}


def run_unit(unit: dict, st: dict) -> dict:
    from ..adapters import lora as L
    from ..data.captions import parse_caption
    from .common import probe

    ds = brand_set(st)
    brand, plain = eval_prompts(st, ds)
    _, text, sched = base.load(base_dir(st))
    seed = st["eval_seed"] + 100 * unit["seed"]

    def draw(unet, prompts):
        return base.sampler(st, unet, text, sched)(prompts, seed)

    def read(unet, prompts):
        images = draw(unet, prompts)
        pred = probe().predict(images)
        ok = [int(all(int(pred[a][i]) == v - (a == "count") for a, v in parse_caption(p).items()
                      if a != "style")) for i, p in enumerate(prompts)]
        return [int(x) for x in (pred["style"] == 1).tolist()], ok, images

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if unit["arm"] == "base":
            unet = base.load(base_dir(st))[0]
        else:
            unet, out = _train(st, RECIPES[unit["arm"]], unit["seed"], ds, Path(tmp))
        out["brand"], _, images = read(unet, brand)
        if unit["seed"] == 0 and st.get("keep_images"):
            out["images"] = images[: st["keep_images"]].tolist()
        if unit["arm"] not in ("base", "full"):
            L.merge_lora(unet)
        out["leak"], out["plain_ok"], _ = read(unet, plain)
        if unit["arm"] not in ("base", "full"):
            L.unmerge_lora(unet)
            unet.disable_adapters()
            _, out["plain_ok_unmerged"], _ = read(unet, plain)
    return out


def _rate(name: str, metric: str, outs: list[dict], key: str) -> Arm:
    xs = [x for o in outs for x in o[key]]
    per_seed = [float(np.mean(o[key])) for o in outs]
    return Arm(name, metric, float(np.mean(xs)), *wilson_interval(sum(xs), len(xs)), n=len(xs),
               n_what="samples", interval="Wilson", per_seed=per_seed)


def summarize(s: Summary) -> Outcome:
    arms, details = [], {"arms": {}}
    for a, outs in s.by_arm().items():
        brand = _rate(f"{a}: brand rate", "style head reads 'brand', held-out brand prompts",
                      outs, "brand")
        leak = _rate(f"{a}: brand leak", "style head reads 'brand', plain prompts", outs, "leak")
        acc = _rate(f"{a}: plain prompt accuracy", "named attributes read back, plain prompts, "
                    "adapter merged", outs, "plain_ok")
        arms += [brand, leak, acc]
        d = {"brand_rate": brand.value, "brand_per_seed": brand.per_seed, "leak": leak.value,
             "plain_acc": acc.value, "recipe": RECIPES.get(a)}
        if a != "base":
            secs = [o["train_seconds"] for o in outs]
            lo, hi = t_interval(secs) if len(secs) > 1 else (float("nan"),) * 2
            arms.append(Arm(f"{a}: training seconds", "Trainer.fit wall time (reported, never "
                            "asserted)", float(np.mean(secs)), lo, hi, n=len(secs)))
            d.update(trainable=outs[0]["trainable"], adapter_mb=outs[0]["adapter_mb"],
                     train_seconds=float(np.mean(secs)))
        if "plain_ok_unmerged" in outs[0]:
            d["plain_acc_unmerged"] = float(np.mean([x for o in outs for x in o["plain_ok_unmerged"]]))
        details["arms"][a] = d
    headline = next(x for x in arms if x.name == "r4: brand rate")
    verdict, reason = decide(headline.lo, headline.hi, s.settings["goal"], "above")
    r4 = details["arms"]["r4"]
    reason += (f"; rank 4 trained {r4['trainable']} parameters ({r4['adapter_mb']:.3f} MB) in "
               f"{r4['train_seconds']:.0f} s; pipeline recipe "
               f"{details['arms']['pipeline']['brand_rate']:.2f}, full fine-tuning "
               f"{details['arms']['full']['brand_rate']:.2f}")
    return Outcome(arms, headline, verdict, reason, _figures(s), details,
                   gate_values={"base_plain_acc": details["arms"]["base"]["plain_acc"]})


def _figures(s: Summary) -> list[str]:
    import torch
    from matplotlib.figure import Figure

    outs = {a: o[0] for a, o in s.by_arm().items() if "images" in o[0]}
    if not outs:
        return []
    fig = Figure(figsize=(8, 1.1 * len(outs)))
    for ax, (a, o) in zip(fig.subplots(len(outs), 1), outs.items()):
        x = ((torch.tensor(o["images"]) + 1) / 2).clamp(0, 1)
        ax.imshow(torch.cat(list(x), dim=2).permute(1, 2, 0).numpy())
        ax.set_axis_off()
        ax.set_title(a, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(s.figure_dir / "brand_samples.png", dpi=120)
    return ["brand_samples.png"]


EXPERIMENT = Experiment(
    name="lora",
    claim="A rank-4 LoRA adapter learns a brand's look from 50 images, cheaply: held-out brand "
          "prompts come out in the brand style at least 80% of the time, while the base stays "
          "intact.",
    rule="Headline: the rank-4 arm's brand rate (probe style head) on held-out brand prompts, "
         "pooled over seeds, 95% Wilson interval over samples. Reproduced if the interval lies "
         "above 0.8; not reproduced if it lies below 0.8; otherwise inconclusive. Parameters, "
         "adapter MB, seconds (never asserted), leak and plain-prompt accuracy merged/unmerged "
         "are reported beside it, with the other ranks, the pipeline's recipe and full "
         "fine-tuning.",
    lecture="09_lora",
    anchor="Hu et al. 2021 (arXiv 2106.09685): LoRA matches full fine-tuning with 10,000x fewer "
           "trainable parameters on GPT-3; a rank-4 SD 1.5 attention LoRA is ~3.2 MB",
    full_minutes=10.0,
    scales={"fast": {**base.FAST, "num_images": 8, "num_prompts": 4, "eval_seed": 31, "goal": 0.8,
                     "keep_images": 4, "steps": 2},
            "full": {**base.FULL, "num_images": 50, "num_prompts": 48, "eval_seed": 31,
                     "goal": 0.8, "keep_images": 8}},
    default_seeds={"fast": 1, "full": 2},
    units=units, run_unit=run_unit, summarize=summarize, version=2, rule_fixed="2026-12-02",
    # an adapter is asked to add a style to a model that draws; the base must draw first
    gates=(Gate("base model (no adapter): named attributes read back on plain prompts",
                "base_plain_acc", ">=", 0.6),))
