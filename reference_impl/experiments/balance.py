"""Experiment `balance`: does class-balanced sampling keep a 90/10 world from making a
"cat-only generator"?

The world has two kinds: circles (the "cats", 90% of the scenes) and squares (the "dogs",
10%), ``data.world.class_probs = [0.9, 0.1, 0, 0]``, rich captions. Four arms, the same seeds
(a seed fixes the initial weights, the noise and the timestep draws; arms differ in what is
drawn or how it is weighted):

  none          a plain shuffle: the model sees a dog one image in ten
  inverse       sampler weight 1 / n_c: both kinds equally often (data/balance.py)
  effective     Cui et al. 2019 (arXiv 1901.05555, eq. 3-4), beta = 0.999: class weight
                1 / E_n with E_n = (1 - beta^n) / (1 - beta); with 3600 / 400 scenes it draws
                the rare kind ~25% of the time - between the two
  loss_reweight a plain shuffle, and each sample's loss multiplied by N q_i = p_c / pi_c
                (``balance.loss_weights``, inverse frequency): the same expected gradient as
                `inverse`, from batches that still hold one dog in ten

"Cat-only generator" has two readings for a text-conditioned model, and the numbers decide
which happens here:
  (1) asked for a dog, it draws one, but worse: kind accuracy and domain-FID (probe features)
      on prompts naming the rare kind, against the same on prompts naming the common kind;
  (2) not asked, it draws dogs less often: the rare kind's share among samples of the empty
      prompt (the model's learned prior, via caption dropout; no guidance) and of prompts that
      name colour and background but not the kind ("one large red shape on a dark background").

Theory the lecture builds on: both balancing methods change the *training distribution's class
prior* and nothing else, so the ideal model of a kind-naming prompt is the same in every arm
(p(x | dog) is unchanged); balancing can only help (1) by giving the rare kind more gradient.
What it does change is (2): an ideal model's unprompted rare share moves from 0.10 to the
sampler's class probability (0.5 for inverse, ~0.25 for effective).
"""
from __future__ import annotations

import numpy as np

from ..evaluation.stats import bootstrap_interval, decide, mean, t_interval, wilson_interval
from .runner import Arm, Experiment, Gate, Outcome, Summary

CAT, DOG = 0, 1  # KINDS[0] = circle, KINDS[1] = square
CLASS_PROBS = [0.9, 0.1, 0.0, 0.0]
ARMS = ("none", "inverse", "effective", "loss_reweight")
BETA = 0.999
EQUIVALENCE = 0.05  # a change in kind accuracy smaller than this is no effect worth the name


def _mean_diff(a, b) -> float:
    return float(np.mean(a) - np.mean(b))


def prompt_set(kind: str | None, n: int) -> list[str]:
    """n prompts cycling over colours x backgrounds; kind=None writes "shape" for the kind."""
    from ..data.vocab import BACKGROUNDS, COLOURS

    out = []
    for i in range(n):
        colour, bg = COLOURS[i % len(COLOURS)], BACKGROUNDS[(i // len(COLOURS)) % len(BACKGROUNDS)]
        out.append(f"one large {colour} {kind or 'shape'} on a {bg} background")
    return out


class ClassWeightedLoss:
    """``DiffusionLoss`` with each sample's term multiplied by its class's loss weight.

    class_weight: (C,) multipliers p_c / pi_c (``balance.loss_weights`` per class); the batch's
    ``kind`` labels pick them. Loss = mean_i w_kind(i) * w_t(i) * ||target - pred||^2.
    """

    def __init__(self, class_weight, prediction_type: str = "epsilon", min_snr_gamma: float = 0.0):
        import torch

        from ..diffusion.objectives import DiffusionLoss

        self.base = DiffusionLoss(prediction_type, min_snr_gamma)
        self.class_weight = torch.as_tensor(class_weight, dtype=torch.float32)

    def __call__(self, unet, batch: dict, forward):

        from ..diffusion.objectives import min_snr_weights, per_sample_mse
        from ..diffusion.schedule import snr

        x = forward(batch["image"], batch["caption"])
        mse = per_sample_mse(forward.predict(unet, x), x.target)
        w = self.class_weight.to(mse.device)[batch["kind"].to(mse.device)]
        if self.base.gamma > 0:
            w = w * min_snr_weights(snr(forward.scheduler.alphas_cumprod, x.t), self.base.gamma,
                                    self.base.prediction_type)
        return (w * mse).mean(), {"t": x.t.detach().cpu(), "mse": mse.detach().cpu(),
                                  "dogs_in_batch": float((batch["kind"] == DOG).float().mean())}


def units(settings: dict, seeds: list[int]) -> list[dict]:
    return [{"arm": a, "seed": s} for a in ARMS for s in seeds]


def _kinds(probe, images) -> list[int]:
    return probe.predict(images)["kind"].tolist()


def run_unit(unit: dict, settings: dict) -> dict:
    """Train one arm on one seed; per-sample kind reads and FID of each prompt set."""
    import torch

    from ..data.balance import class_counts, loss_weights
    from ..data.shapes import sample_scene
    from ..evaluation.fid import FeatureStats, fid
    from ..evaluation.metrics import prompt_accuracy
    from ..evaluation.validation import real_images
    from .common import make_config, probe, train_and_measure

    st, arm = settings, unit["arm"]
    overrides = {"model.preset": st["preset"], "data.num_train": st["num_train"],
                 "data.world.class_probs": CLASS_PROBS, "data.world.caption_mix": [0.0, 0.0, 1.0],
                 "data.balance": arm if arm in ("inverse", "effective") else "none",
                 "data.balance_beta": BETA, "diffusion.sample_steps": st["sample_steps"],
                 "train.curriculum": [{"steps": st["steps"], "resolution": st["resolution"]}],
                 "train.batch_size": st["batch_size"], "train.lr": st["lr"],
                 "train.lr_schedule": "constant_with_warmup", "train.warmup_steps": st["warmup"]}
    cfg = make_config(overrides, seed=unit["seed"], name=f"balance-{arm}-{unit['seed']}")
    kinds = [sample_scene(cfg.data.world, i)["kind"] for i in range(st["num_train"])]
    counts = class_counts(kinds, 4).tolist()
    per_class = [1.0] * 4  # weight 1: exactly DiffusionLoss, and it logs the dogs per batch
    if arm == "loss_reweight":
        w = loss_weights(kinds, "inverse", num_classes=4)
        per_class = [float(w[torch.as_tensor(kinds) == c][0]) if counts[c] else 0.0 for c in range(4)]
    loss = ClassWeightedLoss(per_class, cfg.diffusion.prediction_type, cfg.diffusion.min_snr_gamma)
    sets = {"dog": prompt_set("square", st["num_prompts"]),
            "cat": prompt_set("circle", st["num_prompts"]),
            "kind_free": prompt_set(None, st["num_unprompted"])}
    p = probe()
    res = st["resolution"]

    def measure(trainer, step):
        model = trainer.ema.shadow
        model.eval()
        fn = trainer.sample_fn(res, model)
        out = {}
        for name, texts in sets.items():
            x = fn(texts, 1234).clamp(-1, 1)
            out[name] = {"kind": _kinds(p, x)}
            if name != "kind_free":
                real = real_images(texts, st["num_reference"], res, seed=1234)
                out[name]["fid"] = fid(p.features(x), FeatureStats.of(p.features(real))).value
                # the probe's own ceiling: how often it reads real images of these prompts right
                want = DOG if name == "dog" else CAT
                out[name]["real_kind_acc"] = float(np.mean([k == want for k in _kinds(p, real)]))
                acc = prompt_accuracy(p.predict(x), texts)
                out[name]["all_correct"] = acc["all_correct"]
        from ..diffusion.sampling import sample_with_config

        x = sample_with_config(model, trainer.text, trainer.noise_scheduler, cfg.diffusion,
                               [""] * st["num_unprompted"], res, seed=1234, guidance_scale=1.0)
        out["empty"] = {"kind": _kinds(p, x.clamp(-1, 1))}
        return out

    run = train_and_measure(cfg, [st["steps"]], measure, loss=loss)
    dogs = [r.get("dogs_in_batch") for r in run["history"] if r.get("dogs_in_batch") is not None]
    m = {k: v for k, v in run["measures"][-1].items() if k != "step"}
    return {"sets": m, "counts": counts, "train_seconds": run["seconds"],
            "dogs_in_batch": dogs}


# ------------------------------------------------------------------ summary
def hits(outs: list[dict], name: str, want: int) -> list[float]:
    """0/1 per (seed, prompt) cell, seeds in order: did the probe read kind ``want``?"""
    return [float(k == want) for o in outs for k in o["sets"][name]["kind"]]


def dog_share(outs: list[dict], name: str) -> tuple[float, int]:
    """(dogs, cats-or-dogs) read among the samples of set ``name``, pooled over seeds."""
    ks = [k for o in outs for k in o["sets"][name]["kind"]]
    return float(sum(k == DOG for k in ks)), sum(k in (CAT, DOG) for k in ks)


def sampler_share(arm: str, counts: list[float]) -> float:
    """The rare kind's share of what the arm trains on (draw or expected loss weight)."""
    import torch

    from ..data.balance import class_probabilities

    method = {"none": "none", "inverse": "inverse", "effective": "effective",
              "loss_reweight": "inverse"}[arm]
    return float(class_probabilities(torch.tensor(counts), method, beta=BETA)[DOG])


def readings(none_outs: list[dict]) -> dict:
    """The two readings of "cat-only generator" for the unbalanced model, by the rule."""
    cat_hit, dog_hit = hits(none_outs, "cat", CAT), hits(none_outs, "dog", DOG)
    lo, hi = bootstrap_interval([cat_hit, dog_hit], _mean_diff)
    k, n = dog_share(none_outs, "empty")
    wlo, whi = wilson_interval(k, n)
    return {"asked_worse": {"cat_acc": mean(cat_hit), "dog_acc": mean(dog_hit),
                            "diff": mean(cat_hit) - mean(dog_hit), "lo": lo, "hi": hi,
                            "holds": bool(lo > 0)},
            "less_often_unprompted": {"share": k / n if n else float("nan"), "lo": wlo, "hi": whi,
                                      "n": n, "holds": bool(whi < 0.5)}}


def summarize(s: Summary) -> Outcome:
    by_arm = s.by_arm()
    counts = by_arm["none"][0]["counts"]
    n_seeds = len(s.seeds)
    arms, table = [], {}
    for arm, outs in by_arm.items():
        row = {}
        for name, want, what in (("dog", DOG, "rare"), ("cat", CAT, "common")):
            h = hits(outs, name, want)
            arms.append(Arm(f"{arm}: {what}-kind prompts, kind accuracy",
                            f"share of {what}-kind prompts read back as that kind", mean(h),
                            *wilson_interval(sum(h), len(h)), n=len(h),
                            n_what="seed x prompt cells", interval="Wilson"))
            f = [o["sets"][name]["fid"] for o in outs]
            arms.append(Arm(f"{arm}: {what}-kind prompts, domain-FID",
                            f"domain-FID (probe features), {s.settings['num_prompts']} samples vs "
                            f"{s.settings['num_reference']} real", mean(f), *t_interval(f),
                            n=len(f), per_seed=f))
            a = [o["sets"][name]["all_correct"] for o in outs]
            row[what] = {"kind_acc": mean(h), "fid": f, "all_correct": a}
        for name, label in (("empty", "empty prompt"), ("kind_free", "kind-free prompts")):
            k, n = dog_share(outs, name)
            arms.append(Arm(f"{arm}: rare share, {label}", "dogs / (cats + dogs) read by the probe",
                            k / n if n else float("nan"), *wilson_interval(k, n), n=n,
                            n_what="samples read as cat or dog", interval="Wilson"))
            row[name] = {"share": k / n if n else float("nan"), "n": n,
                         "other": 1 - n / sum(len(o["sets"][name]["kind"]) for o in outs)}
        row["train_share"] = sampler_share(arm, counts)
        table[arm] = row
    base_dog, base_cat = hits(by_arm["none"], "dog", DOG), hits(by_arm["none"], "cat", CAT)
    diffs = {}
    for arm in ARMS[1:]:
        for name, want, base in (("dog", DOG, base_dog), ("cat", CAT, base_cat)):
            h = hits(by_arm[arm], name, want)
            lo, hi = bootstrap_interval([h, base], _mean_diff, paired=True)
            what = "rare" if name == "dog" else "common"
            diffs[(arm, what)] = Arm(f"{arm} - none: {what}-kind accuracy",
                                     f"difference in {what}-kind prompts' kind accuracy",
                                     _mean_diff(h, base), lo, hi, n=len(h),
                                     n_what="seed x prompt cells (paired)",
                                     interval="bootstrap (paired)",
                                     per_seed=[_mean_diff(h[i::n_seeds], base[i::n_seeds])
                                               for i in range(n_seeds)])
    headline = diffs[("inverse", "rare")]
    verdict, reason = decide(headline.lo, headline.hi, 0.0, "above", equivalence=EQUIVALENCE)
    read = readings(by_arm["none"])
    a, u = read["asked_worse"], read["less_often_unprompted"]
    reason += (f"; the unbalanced model, asked: cat {a['cat_acc']:.2f} vs dog {a['dog_acc']:.2f} "
               f"kind accuracy (difference [{a['lo']:.2f}, {a['hi']:.2f}]: reading 1 "
               f"{'holds' if a['holds'] else 'not shown'}); unprompted: dog share "
               f"{u['share']:.2f} [{u['lo']:.2f}, {u['hi']:.2f}] of {u['n']} (reading 2 "
               f"{'holds' if u['holds'] else 'not shown'}); {n_seeds} seeds, the interval "
               "over seed x prompt cells (seed-to-seed spread: per_seed)")
    figures = draw(s, table, diffs, by_arm)
    details = {"table": table, "readings": read, "counts": counts,
               "diffs": {f"{k[0]}/{k[1]}": {"value": v.value, "lo": v.lo, "hi": v.hi,
                                            "per_seed": v.per_seed} for k, v in diffs.items()},
               "dogs_in_batch": {arm: mean([mean(o["dogs_in_batch"]) for o in outs])
                                 for arm, outs in by_arm.items()}}
    cat = hits(by_arm["none"], "cat", CAT)  # the common kind, asked for, unbalanced model
    return Outcome(arms + list(diffs.values()), headline, verdict, reason, figures, details,
                   gate_values={"control_common_kind": float(np.mean(cat))})


def draw(s: Summary, table: dict, diffs: dict, by_arm: dict) -> list[str]:
    """asked.png (kind accuracy and FID per arm, rare vs common), unprompted.png (rare share)."""
    from matplotlib.figure import Figure

    names, x = list(table), np.arange(len(table))
    fig = Figure(figsize=(10, 3.8))
    ax, bx = fig.subplots(1, 2)
    for j, (what, colour) in enumerate((("rare", "tab:orange"), ("common", "tab:blue"))):
        ax.bar(x + 0.38 * j, [table[a][what]["kind_acc"] for a in names], 0.36, color=colour,
               label=f"{what}-kind prompts ({'dogs' if what == 'rare' else 'cats'})")
        bx.bar(x + 0.38 * j, [mean(table[a][what]["fid"]) for a in names], 0.36, color=colour)
        for k, a in enumerate(names):
            bx.scatter([k + 0.38 * j] * len(table[a][what]["fid"]), table[a][what]["fid"],
                       color="k", s=10, zorder=3)
    ax.set_xticks(x + 0.19, names, fontsize=8)
    bx.set_xticks(x + 0.19, names, fontsize=8)
    ax.set(ylabel="kind read back right", ylim=(0, 1), title="asked for the kind")
    bx.set(ylabel="domain-FID (probe features)", title="domain-FID per prompt set (dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(s.figure_dir / "asked.png", dpi=120)

    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    for j, (key, colour) in enumerate((("empty", "tab:green"), ("kind_free", "tab:purple"))):
        vals = [table[a][key]["share"] for a in names]
        ax.bar(x + 0.3 * j, vals, 0.28, color=colour,
               label="empty prompt" if key == "empty" else "kind-free prompts")
    ax.scatter(x + 0.15, [table[a]["train_share"] for a in names], marker="_", s=600, color="k",
               zorder=3, label="share in training (draw / loss weight)")
    ax.axhline(0.1, color="grey", ls=":", lw=1)
    ax.set_xticks(x + 0.15, names, fontsize=8)
    ax.set(ylabel="dogs / (cats + dogs)", ylim=(0, 1), title="not asked: how often a dog")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(s.figure_dir / "unprompted.png", dpi=120)
    return ["asked.png", "unprompted.png"]


EXPERIMENT = Experiment(
    name="balance",
    claim="With 90% cats and 10% dogs a generator becomes a cat generator; class-balanced "
          "sampling (inverse frequency, effective number) or loss reweighting fixes it.",
    rule="Headline: kind accuracy on prompts naming the rare kind, inverse-frequency sampling "
         "minus no balancing, paired over (seed, prompt) cells (same seeds, prompts and sampling "
         "noise), 95% paired bootstrap. Reproduced if the interval lies above 0; not reproduced "
         f"if below 0 or inside +-{EQUIVALENCE}; inconclusive otherwise. The two readings of "
         "'cat-only generator', for the unbalanced model: (1) 'asked, worse' holds if kind "
         "accuracy on cat prompts minus dog prompts has a 95% bootstrap interval above 0; "
         "(2) 'unprompted, less often' holds if the dog share among empty-prompt samples read as "
         "cat or dog has a Wilson interval below 0.5.",
    lecture="06_class_balance",
    anchor="Cui et al. 2019 (arXiv 1901.05555), a classifier result: long-tailed CIFAR-10 at "
           "imbalance 100, ResNet-32 top-1 error 29.64% (softmax) -> 25.43% (best class-balanced "
           "loss), Table 2 as we read it; we know of no published number for a diffusion model's "
           "rare-class prompt accuracy",
    full_minutes=11.0,
    scales={
        # a smoke test of the machinery: a tiny model for a few steps, its numbers mean nothing
        "fast": {"preset": "tiny", "resolution": 16, "num_train": 200, "steps": 4, "batch_size": 4,
                 "lr": 2e-3, "warmup": 1, "num_prompts": 4, "num_unprompted": 4,
                 "num_reference": 16, "sample_steps": 2},
        "full": {"preset": "laptop", "resolution": 16, "num_train": 4000, "steps": 240,
                 "batch_size": 16, "lr": 2e-3, "warmup": 25, "num_prompts": 36,
                 "num_unprompted": 48, "num_reference": 288, "sample_steps": 10},
    },
    default_seeds={"fast": 1, "full": 2},
    units=units, run_unit=run_unit, summarize=summarize, version=1, rule_fixed="2026-12-02",
    # a model that has not learned kinds cannot show a rare kind being neglected: the
    # unbalanced control must draw the common kind it is asked for (fixed 2026-12-08)
    gates=(Gate("none arm (no balancing): kind accuracy on prompts naming the common kind "
                "(circle), mean over seeds and prompts", "control_common_kind", ">=", 0.6),))
