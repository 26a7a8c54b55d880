"""Experiment 2: the brightness bias, and what fixes it - by fine-tuning a competent base.

Claim (Guttenberg 2023, "Diffusion with Offset Noise"; Lin et al. 2024, "Common Diffusion
Noise Schedules and Sample Steps are Flawed", arXiv 2305.08891): a diffusion model trained on
plain Gaussian noise cannot make very dark or very bright images - its samples drift to
mid-grey - because at the last training timestep the image's mean brightness still leaks
through the noise, while sampling starts from noise that holds none. Offset noise (eps + 0.1 n,
n constant per image and channel; objectives.sample_noise) lets the model learn to move the
mean; zero terminal SNR with v-prediction (schedule.make_scheduler, Lin et al. Algorithm 1)
removes the leak, and "trailing" sampler spacing starts sampling at t = T (Lin et al. sec. 3.3).

Both papers *fine-tuned* a model that had been trained with plain noise: Guttenberg
fine-tuned Stable Diffusion with offset noise, Lin et al. fine-tuned Stable Diffusion 2.1 with
the rescaled schedule. So does this experiment, which is also what makes it affordable on a
laptop with models that can draw (issue 24): comparing under-trained models says nothing.

The base (``bases.pretrained(seed, scale, BASE_OVERRIDES)``, built once per seed by
``Experiment.prepare``): the laptop preset trained by the shipped ``train`` command with
*plain* noise (``diffusion.noise_offset=0``; the preset itself ships with offset 0.1, so the
preset's own model cannot be the "before"). Arms, per seed, each from that seed's base:

  base         the base itself, no fine-tune (for reference: what fine-tuning started from)
  plain        fine-tuned with plain noise (noise_offset 0): the control. The same fine-tuning
               budget without the change, so "more training" is separated from "offset noise"
  offset_0.1   fine-tuned with noise_offset 0.1
  zsnr_v       fine-tuned with zero terminal SNR and v-prediction, sampled with trailing
               spacing. The base predicts noise (eps), so this fine-tune also switches the
               parameterisation, not only the schedule (its own prompt accuracy shows whether
               the budget sufficed); the exported scheduler carries the new prediction type
               and schedule, and ``run_unit`` checks that it does

Every fine-tune is the shipped path: ``finetune.fine_tune`` of ``finetune_config`` from the
base's EMA weights, at the base's last resolution (32 px) on the data of the preset's last
curriculum stage (``curriculum.stage_dataset``: its 20 000 ShapesWorld scenes, all sharp, at
32 px), ``steps`` steps of ``batch_size``, a constant LR after ``warmup`` steps (full: 2e-4
after 10, the preset's SFT LR), the same seed (data order, noise draws) in every arm of a seed.
What is measured is the fine-tune's EMA weights, read back from its exported ``final/`` folder.

Measures, per arm and seed:
  grey gap    on ``num_prompts`` prompts asking for a dark or a light background (the 48
              such validation prompts, cycled; full: 96 samples), the background brightness
              of each sample (the median luma of its pixels: the background covers most of a
              ShapesWorld image) against ``real_per_prompt`` real images of each prompt
              (evaluation/validation.py ``real_images``):
                gap = ((bg_dark - data_dark) + (data_light - bg_light)) / 2
              in luma units (0..1): 0 = as dark and as light as the data; positive = pulled
              toward grey. Also the spread (std) of per-image mean luma, samples over data.
  spacing     every eps arm is also sampled with "leading" (diffusers' DDIM default: a 4-step
              DDIM starts at t = 750, abar = 0.14 on the cosine schedule) and "trailing"
              spacing, at each of ``sample_steps`` (full: 15, the preset's, and 4); zsnr_v
              only trails (leading never visits its pure-noise step)
  accuracy    kind+colour+background prompt accuracy of the EMA weights on the scale's
              ``gate_prompts`` validation prompts against ``gate_reference`` real images
              (``bases.gate_measure``, 32 px, evaluation seed 1234, DDIM at the first step
              count, guidance ``guidance``, the arm's shipped spacing)

Why eps models are not simply switched to trailing: with the cosine schedule abar(999) =
2.4e-9, so DDIM's x0 estimate (x - sqrt(1 - abar) eps) / sqrt(abar) multiplies any error of the
predicted noise by ~2e4 on the first trailing step - the first step decides the image.
v-prediction (the zsnr_v arm) has no such division.

Decided (``rows``; the rule is in ``EXPERIMENT.rule``): (1) the headline, offset 0.1 narrows
the grey gap: gap(plain) - gap(offset_0.1), paired by seed; (2) zero terminal SNR + v +
trailing narrows it: gap(plain) - gap(zsnr_v); (3) a side constraint: offset 0.1 may not cost
prompt accuracy, acc(plain) - acc(offset_0.1) below 0.05. The competence gate reads the plain
arm's accuracy (>= 0.6, ``bases.accuracy_gate``); row 2 also needs the zsnr_v arm's own mean
accuracy >= 0.6 (a model broken by the change of parameterisation would be "darker" for no
reason worth the name), else that row alone is underpowered.

Power: 3 seeds (3 bases, 9 fine-tunes). With 3 seeds the 95% t interval's half-width is
4.30 s / sqrt(3) = 2.5 s, s the seed-to-seed sd of the paired gap difference, so deciding
against the +-0.02 luma equivalence band needs s below ~0.008. No pilot has been run under
this design; the half-width will be reported after the first full run. Within a seed the gap
averages 48 dark and 48 light samples (full): if samples vary as the data's background levels
do (uniform over 0.16 luma, sd 0.046), its sampling error is ~0.005, below the band.

Cost (full; the bases are built before and counted apart). With t_step the seconds of one
fine-tuning step (laptop UNet, batch 32, 32 px, one thread) and t_eval those of one guided
UNet evaluation of one image (DDIM step with classifier-free guidance, batch 2 per image):
  per seed  3 x steps x t_step                      the three fine-tunes
          + (7 x 96 + 4 x 96) x 15 x t_eval         15-step samples: 7 brightness variants
                                                    (plain, offset, base: 2; zsnr_v: 1) and
                                                    4 arms' accuracy prompts
          + 7 x 96 x 4 x t_eval                     4-step brightness variants
          = 450 t_step + 18 528 t_eval  (+ ~10 s a unit: loading, export, 960 references)
On an idle core (t_step ~1.2 s, t_eval ~25 ms: the laptop preset's own SFT step and 0.64 s
per 25-step sample) that is ~1 000 s a seed, ~3 000 worker-seconds for 3 seeds: ~26 minutes
on two one-thread workers (``full_minutes`` 30). Measured while the box also trained other
models (load 3-6 on 2 cores): t_step 2.5-3.8 s, t_eval 47-59 ms, about twice that. Each unit
reports its own seconds (``details["seconds"]``).

Checked before the design was fixed (feasibility, not a pilot of the claim): 150 steps of the
zsnr_v fine-tune from the shipped laptop base (offset 0.1, seed 0) exported a v-prediction,
zero-terminal-SNR, trailing scheduler and left a model at kind+colour+background accuracy
1.000 (n=48 prompts; training loss 0.080 -> 0.009, its highest-noise tenth 1.24 -> 0.24).

Result ``details`` (for lecture 01):
  "variants":  {arm: {variant: {"gap", "bg_dark", "bg_light", "spread_ratio"}: per-seed lists}}
               variant = "<spacing><steps>", e.g. "leading15", "trailing4"
  "data":      {"bg_dark", "bg_light", "spread"}: the real images' numbers
  "spacing":   {variant: per-seed gap} of the plain arm (the same fine-tuned models)
  "histograms": {arm: per-image mean-luma histogram (10 bins over [0, 1]) of seed 0's
               samples, the arm's main variant}, plus "data"
  "accuracy":  {arm: per-seed kind+colour+background prompt accuracy}
  "scheduler": {arm: the exported scheduler's prediction_type, zero_terminal_snr, spacing}
  "fine_tune": {arm: per-seed {"loss_start", "loss_end", "loss_t_end"}} (loss_t: 10 bins)
  "seconds":   {arm: per-seed {"fine_tune", "brightness", "accuracy"}}
  "base":      per-seed records of the bases (acc_kcb, fid, train_seconds)
Figures: "brightness.png" (background luma per arm against the data, dark and light prompts)
and "spacing.png" (grey gap of the same models under leading / trailing spacing).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ..evaluation.stats import decide, mean, t_interval
from . import bases
from .bases import ACC_GATE, GATE_KEY, accuracy_gate
from .runner import UNDERPOWERED, Arm, Experiment, Outcome, Summary, claim_row, constraint_row

# the base: the laptop preset trained without the ingredient this experiment is about
BASE_OVERRIDES = ("diffusion.noise_offset=0",)
ARMS = {  # arm -> overrides of the base's config for its fine-tune; None: the base, untouched
    "plain": ("diffusion.noise_offset=0",),
    "offset_0.1": ("diffusion.noise_offset=0.1",),
    "zsnr_v": ("diffusion.noise_offset=0", "diffusion.zero_terminal_snr=true",
               "diffusion.prediction_type=v_prediction"),
    "base": None,
}
# each arm's shipped sampler spacing (make_scheduler's default): the variant it is judged by
SPACING = {"plain": "leading", "offset_0.1": "leading", "zsnr_v": "trailing", "base": "leading"}
EQUIVALENCE = 0.02  # luma: a gap change smaller than this is no effect worth the name
MAX_DROP = 0.05  # prompt accuracy offset noise may cost (side constraint)


def main(arm: str, settings: dict) -> str:
    """The variant an arm is judged by: its shipped spacing at the preset's step count."""
    return f"{SPACING[arm]}{settings['sample_steps'][0]}"


def variants(arm: str, settings: dict) -> list[tuple[str, int]]:
    """(spacing, steps) pairs an arm is sampled with: zero terminal SNR only trails."""
    spacings = ("trailing",) if arm == "zsnr_v" else ("leading", "trailing")
    return [(sp, n) for n in settings["sample_steps"] for sp in spacings]


def units(settings: dict, seeds: list[int]) -> list[dict]:
    return [{"arm": a, "seed": s} for a in ARMS for s in seeds]  # the fine-tunes first


def prepare(settings: dict, seeds: list[int], scale: str) -> None:
    """The plain-noise bases, one per seed, on every core before the units start."""
    bases.build(seeds, settings["base_scale"], BASE_OVERRIDES)


def prompts(n: int) -> list[str]:
    """n validation prompts that ask for a dark or a light background (grey ones skipped;
    there are 48 distinct ones, cycled: each repeat is sampled from other noise)."""
    from ..evaluation.validation import validation_prompts

    out = [p for p in validation_prompts(3 * n) if "grey" not in p]
    return out[:n]


def background(images) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B,) median luma: the background's brightness."""
    from ..evaluation.metrics import luma

    return luma(images).flatten(1).median(dim=1).values.numpy()


def brightness(images, texts: list[str]) -> dict:
    """Background luma of dark and light prompts, their grey gap is computed against data."""
    from ..evaluation.metrics import luma

    bg = background(images)
    dark = np.array(["dark" in t for t in texts])
    per_image = luma(images).mean(dim=(1, 2)).numpy()
    return {"bg_dark": float(bg[dark].mean()), "bg_light": float(bg[~dark].mean()),
            "spread": float(per_image.std()),
            "histogram": np.histogram(per_image, bins=10, range=(0, 1))[0].tolist()}


def fine_tuned(final: Path, arm: str, seed: int, st: dict, work: Path) -> tuple[Path, dict]:
    """Fine-tune the base ``final`` for ``arm`` (the shipped ``fine_tune`` from its EMA
    weights); returns (the fine-tune's exported final/ folder, its loss record)."""
    from ..config import load_config
    from ..data.curriculum import stage_dataset
    from ..training.finetune import fine_tune, finetune_config

    cfg = load_config(str(final / "config.yaml"), [f"seed={seed}", *ARMS[arm]])
    last = cfg.train.curriculum[-1]  # the preset's finishing stage: its scenes, all sharp
    if last.resolution != st["resolution"]:
        raise ValueError(f"noise_offset: the base ends at {last.resolution} px, the settings "
                         f"ask for {st['resolution']} px")
    run = finetune_config(cfg, work, f"noise_offset-{arm}", st["steps"], st["lr"],
                          st["batch_size"], st["warmup"])
    trainer = fine_tune(run, final, stage_dataset(cfg.data, last), init="ema", progress=False)
    h = trainer.history
    tail = h[-min(10, len(h)):]
    bins = sorted({k for r in tail for k in r if k.startswith("loss_t/")},
                  key=lambda k: int(k.split("/")[1]))
    record = {"loss_start": h[0]["loss"], "loss_end": mean([r["loss"] for r in tail]),
              "loss_t_end": {k.split("/")[1]: mean([r[k] for r in tail if k in r])
                             for k in bins}}
    return work / "final", record


def run_unit(unit: dict, st: dict) -> dict:
    """Fine-tune one arm from its seed's base (or take the base), then sample the dark/light
    prompts under each sampler variant and measure the prompt accuracy."""
    import torch

    from ..diffusion.sampling import sample_with_config
    from ..evaluation.validation import real_images
    from ..models.exported import load_final
    from ..paths import cache_dir

    arm, seed, res = unit["arm"], unit["seed"], st["resolution"]
    final, record = bases.pretrained(seed, st["base_scale"], BASE_OVERRIDES)
    texts = prompts(st["num_prompts"])
    seconds: dict = {}
    with tempfile.TemporaryDirectory(prefix=f"noise_offset-{arm}-",
                                     dir=cache_dir("experiments", "_work")) as tmp:
        t0 = time.perf_counter()
        loss = None
        if ARMS[arm] is not None:
            final, loss = fine_tuned(final, arm, seed, st, Path(tmp))
        seconds["fine_tune"] = time.perf_counter() - t0
        unet, cfg, scheduler, text = load_final(final)  # the EMA weights, as exported
        sc = scheduler.config
        shipped = {"prediction_type": sc["prediction_type"],
                   "zero_terminal_snr": bool(sc.get("rescale_betas_zero_snr", False)),
                   "timestep_spacing": sc.get("timestep_spacing")}
        want = ("v_prediction", True, "trailing") if arm == "zsnr_v" else ("epsilon", False,
                                                                           "leading")
        if tuple(shipped.values()) != want:
            raise RuntimeError(f"noise_offset: arm {arm}'s exported scheduler is {shipped}, "
                               f"expected {want}: the fine-tune did not carry the arm's schedule")

        def draw(texts_, seed_, steps, spacing=None):
            return sample_with_config(unet, text, scheduler, cfg.diffusion, texts_, res,
                                      seed=seed_, steps=steps, guidance_scale=st["guidance"],
                                      timestep_spacing=spacing)

        t0 = time.perf_counter()
        with torch.no_grad():
            measured = {f"{sp}{n}": brightness(draw(texts, 1234, n, sp), texts)
                        for sp, n in variants(arm, st)}
        seconds["brightness"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        acc = bases.gate_measure(lambda p, s: draw(p, s, st["sample_steps"][0]), res,
                                 st["gate_prompts"], st["gate_reference"])
        seconds["accuracy"] = time.perf_counter() - t0
    with torch.no_grad():
        data = brightness(real_images(texts, len(texts) * st["real_per_prompt"], res,
                                      seed=1234), texts * st["real_per_prompt"])
    return {"variants": measured, "data": data, "acc": acc, "scheduler": shipped,
            "fine_tune": loss, "seconds": seconds,
            "base": {k: record.get(k) for k in ("acc_kcb", "fid", "train_seconds", "overrides")}}


def gap(v: dict, data: dict) -> float:
    """Grey gap: how far dark backgrounds are too bright and light ones too dark (luma)."""
    return ((v["bg_dark"] - data["bg_dark"]) + (data["bg_light"] - v["bg_light"])) / 2


def _paired(name: str, metric: str, a: list[float], b: list[float]) -> Arm:
    d = [x - y for x, y in zip(a, b)]
    return Arm(name, metric, mean(d), *t_interval(d), n=len(d), per_seed=d)


def summarize(s: Summary) -> Outcome:
    by_arm = s.by_arm()
    data = by_arm["plain"][0]["data"]  # the same real images in every unit
    table: dict = {}
    for arm, outs in by_arm.items():
        table[arm] = {}
        for key in outs[0]["variants"]:
            per = [o["variants"][key] for o in outs]
            table[arm][key] = {"gap": [gap(v, data) for v in per],
                               "bg_dark": [v["bg_dark"] for v in per],
                               "bg_light": [v["bg_light"] for v in per],
                               "spread_ratio": [v["spread"] / data["spread"] for v in per]}
    n = len(s.seeds)
    m = {a: main(a, s.settings) for a in by_arm}
    g = {a: table[a][m[a]]["gap"] for a in by_arm}
    acc = {a: [o["acc"]["acc_kcb"] for o in outs] for a, outs in by_arm.items()}
    arms = []
    for arm in by_arm:
        arms.append(Arm(arm, f"grey gap (luma), DDIM {m[arm]}", mean(g[arm]), *t_interval(g[arm]),
                        n=n, per_seed=g[arm]))
        r = table[arm][m[arm]]["spread_ratio"]
        arms.append(Arm(f"{arm} spread", "std of per-image mean luma, samples / data", mean(r),
                        *t_interval(r), n=n, per_seed=r))
        arms.append(Arm(f"{arm} prompt accuracy",
                        f"kind+colour+background, EMA, n={s.settings['gate_prompts']} prompts",
                        mean(acc[arm]), *t_interval(acc[arm]), n=n, per_seed=acc[arm]))
    headline = _paired("gap reduction by offset 0.1", "gap(plain) - gap(offset 0.1), luma",
                       g["plain"], g["offset_0.1"])
    zsnr = _paired("gap reduction by zsnr+v+trailing", "gap(plain) - gap(zsnr_v), luma",
                   g["plain"], g["zsnr_v"])
    tuned = _paired("gap reduction by the plain fine-tune", "gap(base) - gap(plain), luma",
                    g["base"], g["plain"])
    drop = _paired("prompt accuracy drop by offset 0.1",
                   "acc(plain) - acc(offset 0.1), kind+colour+background", acc["plain"],
                   acc["offset_0.1"])
    arms += [headline, zsnr, tuned, drop]
    spacing = {k: table["plain"][k]["gap"] for k in table["plain"]}
    for steps in s.settings["sample_steps"]:
        arms.append(_paired(f"spacing effect, {steps} steps",
                            "gap(leading) - gap(trailing), plain", spacing[f"leading{steps}"],
                            spacing[f"trailing{steps}"]))
    verdict, reason = decide(headline.lo, headline.hi, 0.0, "above", equivalence=EQUIVALENCE)
    st = s.settings
    reason += (f" (gap reduction in luma, paired over {n} seeds; fine-tunes of {st['steps']} "
               f"steps of batch {st['batch_size']} at {st['resolution']} px from plain-noise bases)")
    zrow = claim_row("zero terminal SNR + v + trailing narrows it", zsnr, 0.0, "above",
                     EQUIVALENCE)
    if not mean(acc["zsnr_v"]) >= ACC_GATE:  # a broken model is "darker" for no good reason
        zrow.verdict = UNDERPOWERED
        zrow.reason = (f"the zsnr_v arm's own prompt accuracy {mean(acc['zsnr_v']):.3g} is below "
                       f"{ACC_GATE:g}: the fine-tune did not leave a model that draws the prompt, "
                       f"so its brightness decides nothing (interval {zrow.reason})")
    rows = [claim_row("offset 0.1 narrows the grey gap", headline, 0.0, "above", EQUIVALENCE),
            zrow,
            constraint_row(f"offset 0.1 costs at most {MAX_DROP:g} prompt accuracy", drop,
                           MAX_DROP, "below")]
    details = {"variants": table, "data": {k: data[k] for k in ("bg_dark", "bg_light", "spread")},
               "spacing": spacing,
               "histograms": {**{a: outs[0]["variants"][m[a]]["histogram"]
                                 for a, outs in by_arm.items()}, "data": data["histogram"]},
               "accuracy": acc,
               "scheduler": {a: outs[0]["scheduler"] for a, outs in by_arm.items()},
               "fine_tune": {a: [o["fine_tune"] for o in outs] for a, outs in by_arm.items()
                             if ARMS[a] is not None},
               "seconds": {a: [o["seconds"] for o in outs] for a, outs in by_arm.items()},
               "base": [o["base"] for o in by_arm["base"]]}
    figures = draw(table, data, s)
    return Outcome(arms, headline, verdict, reason, figures, details, rows=rows,
                   gate_values={GATE_KEY: mean(acc["plain"])})


def draw(table: dict, data: dict, s: Summary) -> list[str]:
    """brightness.png: background luma per arm vs data; spacing.png: gap per spacing."""
    # Figure objects, not pyplot: no global backend switch, so a notebook that computes the
    # experiment keeps its inline figures
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.8))
    ax = fig.subplots()
    names = list(table)
    x = np.arange(len(names))
    for j, (which, colour) in enumerate((("bg_dark", "#333"), ("bg_light", "#bbb"))):
        vals = [table[a][main(a, s.settings)][which] for a in names]
        ax.bar(x + 0.38 * j, [mean(v) for v in vals], 0.36, color=colour, edgecolor="k",
               label=f"{which[3:]} prompts")
        for i, v in enumerate(vals):
            ax.plot([i + 0.38 * j] * len(v), v, "r.", ms=5)
        ax.axhline(data[which], color=colour, ls="--", lw=1)
    ax.set_xticks(x + 0.19, [f"{a}\n(DDIM {main(a, s.settings)})" for a in names], fontsize=8)
    ax.set_ylabel("background luma (median)")
    ax.set_ylim(0, 1.15)  # room for the legend above the brightest data
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title(f"dashed: the real images of the same prompts; dots: seeds (n={len(s.seeds)})",
                 fontsize=9)
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(s.figure_dir / "brightness.png", dpi=120)

    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    keys = list(table["plain"])
    for arm, style in (("base", "o:"), ("plain", "s-"), ("offset_0.1", "^--")):
        ax.plot(keys, [mean(table[arm][k]["gap"]) for k in keys], style, ms=7, mfc="none",
                label=arm)
    z = [k for k in keys if k in table["zsnr_v"]]
    ax.plot(z, [mean(table["zsnr_v"][k]["gap"]) for k in z], "D", ms=7,
            label="zsnr_v (trails only)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("grey gap (luma); 0 = as the data")
    ax.set_title(f"the same models, two sampler spacings (n={len(s.seeds)} seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(s.figure_dir / "spacing.png", dpi=120)
    return ["brightness.png", "spacing.png"]


EXPERIMENT = Experiment(
    name="noise_offset",
    claim="Fine-tuning a model trained with plain noise with offset noise (0.1) lets it make "
          "dark and light backgrounds as dark and light as the data, where plain noise pulls "
          "them toward grey.",
    rule="Each seed's plain-noise laptop base (bases.pretrained, diffusion.noise_offset=0) is "
         "fine-tuned per arm from its EMA weights with the same steps, data and seed; the grey "
         "gap of an arm is ((bg_dark - data_dark) + (data_light - bg_light)) / 2, the median "
         "background luma of its EMA samples of the dark/light prompts against the real images "
         "of the same prompts, DDIM at the first step count of the scale (full: 15), guidance "
         "3, each arm's shipped spacing (leading for eps arms, trailing for zsnr_v). "
         "Row 1 (headline): gap(plain) - gap(offset_0.1), paired by seed: reproduced if its 95% "
         "t interval over seeds lies above 0; not reproduced if it lies below 0 or inside "
         f"+-{EQUIVALENCE}; otherwise inconclusive. Row 2: gap(plain) - gap(zsnr_v), the same "
         f"rule, and underpowered if the zsnr_v arm's mean prompt accuracy is below {ACC_GATE}. "
         "Row 3 (side constraint): acc(plain) - acc(offset_0.1), kind+colour+background prompt "
         "accuracy on the scale's gate prompts, paired by seed: held if its 95% t interval lies "
         f"below {MAX_DROP}, violated if above, otherwise inconclusive. Gate: the plain arm's "
         f"mean accuracy >= {ACC_GATE}, else every row is underpowered.",
    lecture="01_curriculum",
    anchor="Guttenberg 2023 (qualitative: offset noise, fine-tuned into Stable Diffusion, makes "
           "very dark/bright images possible); Lin et al. 2024 (arXiv 2305.08891), Fig. 1 and "
           "sec. 3 (SD 2.1 fine-tuned to zero terminal SNR)",
    full_minutes=30.0,
    scales={
        "fast": {"base_scale": "fast", "resolution": 32, "steps": 4, "batch_size": 8,
                 "lr": 2e-4, "warmup": 1, "num_prompts": 6, "real_per_prompt": 4,
                 "sample_steps": [4], "guidance": 3.0, "gate_prompts": 8, "gate_reference": 64},
        "full": {"base_scale": "full", "resolution": 32, "steps": 150, "batch_size": 32,
                 "lr": 2e-4, "warmup": 10, "num_prompts": 96, "real_per_prompt": 8,
                 "sample_steps": [15, 4], "guidance": 3.0, "gate_prompts": 96,
                 "gate_reference": 960},
    },
    default_seeds={"fast": 1, "full": 3},
    units=units, run_unit=run_unit, summarize=summarize, version=3,
    gates=(accuracy_gate("plain arm (the base fine-tuned with plain noise)",
                         "32 px, DDIM at the scale's first step count, guidance 3"),),
    rule_fixed="2026-12-08", prepare=prepare,
)
