"""Experiment 2: the brightness bias, and what fixes it.

Claim (Guttenberg 2023, "Diffusion with Offset Noise"; Lin et al. 2024, "Common Diffusion
Noise Schedules and Sample Steps are Flawed", arXiv 2305.08891): a diffusion model trained on
plain Gaussian noise cannot make very dark or very bright images - its samples drift to
mid-grey - because at the last training timestep the image's mean brightness still leaks
through the noise, while sampling starts from noise that holds none. Offset noise (eps + 0.1 n,
n constant per image and channel; objectives.sample_noise) lets the model learn to move the
mean; zero terminal SNR with v-prediction (schedule.make_scheduler, Lin et al. Algorithm 1)
removes the leak, and "trailing" sampler spacing starts sampling at t = T (Lin et al. sec. 3.3).

Arms (one model per arm and seed, 16 px, the laptop UNet preset):
  no_offset    eps-prediction, noise_offset 0
  offset_0.1   eps-prediction, noise_offset 0.1
  zsnr_v       zero terminal SNR, v-prediction, sampled with trailing spacing

Measure, on prompts asking for dark or light backgrounds: the background brightness of each
sample (the median luma of its pixels: the background covers most of a ShapesWorld image)
against the real images of the same prompts (evaluation/validation.py ``real_images``), and
the spread (std) of per-image mean luma, samples over data. The "grey gap" of a model is
  gap = ((bg_dark - data_dark) + (data_light - bg_light)) / 2
(in luma units, 0..1): 0 = as dark and as light as the data; positive = pulled toward grey.

Sampler spacing (the second question of the file): the eps models are also sampled with
"leading" (diffusers' DDIM default: a 4-step DDIM starts at t = 750, abar = 0.14 on the cosine
schedule) and "trailing" spacing, at 15 (laptop preset) and 4 (ci preset) DDIM steps.

Why eps models are not simply switched to trailing: with the cosine schedule abar(999) =
2.4e-9, so DDIM's x0 estimate (x - sqrt(1 - abar) eps) / sqrt(abar) multiplies any error of the
predicted noise by ~2e4 on the first trailing step; measured at full scale (2 seeds), an eps
model's trailing 4-step and 15-step samples agree to three decimals - the first step decides
the image. v-prediction (the zsnr_v arm) has no such division.

Result ``details`` (for lecture 01):
  "variants":  {arm: {variant: {"gap", "bg_dark", "bg_light", "spread_ratio"}: per-seed lists}}
               variant = "<spacing><steps>", e.g. "leading15", "trailing4"
  "data":      {"bg_dark", "bg_light", "spread"}: the real images' numbers
  "spacing":   {"leading15", "trailing15", "leading4", "trailing4"}: the no_offset arm's gap
               per seed under each spacing (the same trained models)
  "histograms": {arm: per-image mean-luma histogram (10 bins over [0, 1]) of seed 0's
               samples, laptop-like variant}, plus "data"
Figures: "brightness.png" (background luma per arm against the data, dark and light prompts)
and "spacing.png" (grey gap of the same models under leading / trailing spacing).
"""
from __future__ import annotations

import numpy as np

from ..evaluation.stats import decide, mean, t_interval
from .bases import GATE_KEY, accuracy_gate
from .runner import Arm, Experiment, Outcome, Summary, claim_row

ARMS = {  # arm -> config overrides; each arm's "main" sampler variant is the laptop preset's
    "no_offset": {"diffusion.noise_offset": 0.0},
    "offset_0.1": {"diffusion.noise_offset": 0.1},
    "zsnr_v": {"diffusion.noise_offset": 0.0, "diffusion.zero_terminal_snr": True,
               "diffusion.prediction_type": "v_prediction"},
}
SPACING = {"no_offset": "leading", "offset_0.1": "leading", "zsnr_v": "trailing"}  # as shipped
EQUIVALENCE = 0.02  # luma: a gap change smaller than this is no effect worth the name


def main(arm: str, settings: dict) -> str:
    """The variant an arm is judged by: its shipped spacing at the preset's step count."""
    return f"{SPACING[arm]}{settings['sample_steps'][0]}"


def variants(arm: str, settings: dict) -> list[tuple[str, int]]:
    """(spacing, steps) pairs an arm is sampled with: zero terminal SNR only trails."""
    steps = settings["sample_steps"]
    spacings = ("trailing",) if arm == "zsnr_v" else ("leading", "trailing")
    return [(sp, n) for sp in spacings for n in steps]


def units(settings: dict, seeds: list[int]) -> list[dict]:
    return [{"arm": a, "seed": s} for a in ARMS for s in seeds]


def prompts(n: int) -> list[str]:
    """n validation prompts that ask for a dark or a light background (grey ones skipped)."""
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


def run_unit(unit: dict, settings: dict) -> dict:
    """Train one arm's model, sample the dark/light prompts under each sampler variant."""
    import torch

    from ..diffusion.sampling import sample
    from ..evaluation.validation import real_images
    from .bases import gate_measure
    from .common import make_config, train_and_measure

    arm, res = unit["arm"], settings["resolution"]
    overrides = {"model.preset": settings["preset"], "data.resolution": res,
                 "data.num_train": settings["num_train"],
                 "train.curriculum": [{"steps": settings["steps"], "resolution": res}],
                 "train.batch_size": settings["batch_size"], "train.lr": settings["lr"],
                 "train.lr_schedule": "constant_with_warmup",
                 "train.warmup_steps": settings["warmup"], **ARMS[arm]}
    cfg = make_config(overrides, seed=unit["seed"], name=f"noise_offset-{arm}")
    texts = prompts(settings["num_prompts"])

    def measure(trainer, step):
        model = trainer.ema.shadow
        model.eval()
        out = {}
        if arm == "no_offset":  # the control: the competence gate reads it
            out["gate"] = gate_measure(trainer.sample_fn(res, model), res,
                                       settings["gate_prompts"], settings["gate_reference"])
        for spacing, n in variants(arm, settings):
            x = sample(model, trainer.text, texts, res, trainer.noise_scheduler, steps=n,
                       guidance_scale=settings["guidance"], seed=1234,
                       timestep_spacing=spacing)
            out[f"{spacing}{n}"] = brightness(x, texts)
        return out

    run = train_and_measure(cfg, [settings["steps"]], measure)
    with torch.no_grad():
        data = brightness(real_images(texts, len(texts) * settings["real_per_prompt"], res,
                                      seed=1234), texts * settings["real_per_prompt"])
    measured = {k: v for k, v in run["measures"][-1].items() if k not in ("step", "gate")}
    return {"variants": measured, "data": data, "train_seconds": run["seconds"],
            "gate": run["measures"][-1].get("gate")}


def gap(v: dict, data: dict) -> float:
    """Grey gap: how far dark backgrounds are too bright and light ones too dark (luma)."""
    return ((v["bg_dark"] - data["bg_dark"]) + (data["bg_light"] - v["bg_light"])) / 2


def summarize(s: Summary) -> Outcome:
    by_arm = s.by_arm()
    data = by_arm["no_offset"][0]["data"]  # the same real images in every unit
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
    arms = []
    m = {a: main(a, s.settings) for a in SPACING}
    for arm, key in m.items():
        g = table[arm][key]["gap"]
        arms.append(Arm(arm, f"grey gap (luma), DDIM {key}", mean(g), *t_interval(g), n=n,
                        per_seed=g))
        r = table[arm][key]["spread_ratio"]
        arms.append(Arm(f"{arm} spread", "std of per-image mean luma, samples / data", mean(r),
                        *t_interval(r), n=n, per_seed=r))
    effect = [a - b for a, b in zip(table["no_offset"][m["no_offset"]]["gap"],
                                    table["offset_0.1"][m["offset_0.1"]]["gap"])]
    headline = Arm("gap reduction by offset 0.1", "gap(no offset) - gap(offset 0.1), luma",
                   mean(effect), *t_interval(effect), n=n, per_seed=effect)
    zeff = [a - b for a, b in zip(table["no_offset"][m["no_offset"]]["gap"],
                                  table["zsnr_v"][m["zsnr_v"]]["gap"])]
    zsnr = Arm("gap reduction by zsnr+v+trailing", "gap(no offset) - gap(zsnr_v)",
               mean(zeff), *t_interval(zeff), n=n, per_seed=zeff)
    arms += [headline, zsnr]
    spacing = {k: table["no_offset"][k]["gap"] for k in table["no_offset"]}
    for steps in s.settings["sample_steps"]:
        d = [a - b for a, b in zip(spacing[f"leading{steps}"], spacing[f"trailing{steps}"])]
        arms.append(Arm(f"spacing effect, {steps} steps", "gap(leading) - gap(trailing), no_offset",
                        mean(d), *t_interval(d), n=n, per_seed=d))
    verdict, reason = decide(headline.lo, headline.hi, 0.0, "above", equivalence=EQUIVALENCE)
    reason += (f" (gap reduction in luma, paired over {n} seeds; {s.settings['steps']} steps of "
               f"batch {s.settings['batch_size']} at {s.settings['resolution']} px)")
    details = {"variants": table, "data": {k: data[k] for k in ("bg_dark", "bg_light", "spread")},
               "spacing": spacing,
               "histograms": {**{a: outs[0]["variants"][m[a]]["histogram"]
                                 for a, outs in by_arm.items()}, "data": data["histogram"]}}
    figures = draw(table, data, s)
    acc = [o["gate"]["acc_kcb"] for o in by_arm["no_offset"]]
    arms.append(Arm("no_offset prompt accuracy", "kind+colour+background, EMA", mean(acc),
                    *t_interval(acc), n=n, per_seed=acc))
    rows = [claim_row("offset 0.1 narrows the grey gap", headline, 0.0, "above", EQUIVALENCE),
            claim_row("zero terminal SNR + v + trailing narrows it", zsnr, 0.0, "above",
                      EQUIVALENCE)]
    return Outcome(arms, headline, verdict, reason, figures, details, rows=rows,
                   gate_values={GATE_KEY: mean(acc)})


def draw(table: dict, data: dict, s: Summary) -> list[str]:
    """brightness.png: background luma per arm vs data; spacing.png: gap per spacing."""
    # Figure objects, not pyplot: no global backend switch, so a notebook that computes the
    # experiment keeps its inline figures
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    names = list(SPACING)
    for j, (which, colour) in enumerate((("bg_dark", "#333"), ("bg_light", "#bbb"))):
        vals = [mean(table[a][main(a, s.settings)][which]) for a in names]
        ax.bar(np.arange(len(names)) + 0.38 * j, vals, 0.36, color=colour, edgecolor="k",
               label=f"{which[3:]} prompts")
        ax.axhline(data[which], color=colour, ls="--", lw=1)
    ax.set_xticks(np.arange(len(names)) + 0.19, names)
    ax.set_ylabel("background luma (median)")
    ax.set_ylim(0, 1)
    ax.set_title("dashed: the real images of the same prompts")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(s.figure_dir / "brightness.png", dpi=120)

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    keys = list(table["no_offset"])
    for arm in ("no_offset", "offset_0.1"):
        ax.plot(keys, [mean(table[arm][k]["gap"]) for k in keys], "o-", label=arm)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("grey gap (luma); 0 = as the data")
    ax.set_title(f"the same models, two sampler spacings (n={len(s.seeds)} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(s.figure_dir / "spacing.png", dpi=120)
    return ["brightness.png", "spacing.png"]


EXPERIMENT = Experiment(
    name="noise_offset",
    claim="Offset noise (0.1) lets a diffusion model make dark and light backgrounds as dark "
          "and light as the data, where plain noise pulls them toward grey.",
    rule="headline = gap(no offset) - gap(offset 0.1), the grey gap of the dark/light prompts' "
         "background luma against the real images, paired by seed, DDIM at the first step count "
         "of the scale (full: 15) with leading spacing; "
         "reproduced if its 95% t interval over seeds lies above 0; not reproduced if below 0 "
         f"or inside +-{EQUIVALENCE}; otherwise inconclusive",
    lecture="01_curriculum",
    anchor="Guttenberg 2023 (qualitative: offset noise makes very dark/bright images possible); "
           "Lin et al. 2024 (arXiv 2305.08891), Fig. 1 and sec. 3",
    full_minutes=8.0,
    scales={
        "fast": {"preset": "tiny", "resolution": 16, "num_train": 256, "steps": 8,
                 "batch_size": 8, "lr": 2e-3, "warmup": 2, "num_prompts": 6,
                 "real_per_prompt": 4, "sample_steps": [4], "guidance": 3.0,
                 "gate_prompts": 8, "gate_reference": 64},
        "full": {"preset": "laptop", "resolution": 16, "num_train": 4000, "steps": 200,
                 "batch_size": 32, "lr": 2e-3, "warmup": 20, "num_prompts": 16,
                 "real_per_prompt": 8, "sample_steps": [15, 4], "guidance": 3.0,
                 "gate_prompts": 96, "gate_reference": 960},
    },
    default_seeds={"fast": 1, "full": 2},
    units=units, run_unit=run_unit, summarize=summarize, version=2,
    gates=(accuracy_gate("no_offset arm (plain noise)"),), rule_fixed="2026-12-08",
)
