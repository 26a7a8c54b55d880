"""Experiment `dpo`: does Diffusion-DPO teach the SFT model a taste it did not have?

Wallace et al. 2024 (arXiv 2311.12908) fine-tune SDXL with the Diffusion-DPO loss (eq. 14,
``alignment/dpo.py``) on 851k Pick-a-Pic pairs at beta 5000 (their code's convention, 2500 in
ours, which is diffusers' ``beta_dpo``); human raters preferred SDXL-DPO over SDXL about two
times in three. Here the rater is ``preferences.Judge(mode="larger")``: of two images of a
prompt that names no size, prefer the one whose shapes cover more of the canvas. The SFT model
leaves size free, so the taste is one it does not already meet.

Arms, all from the same SFT model (``alignment_base.sft_model``), on the same pairs (two SFT
samples of each of ``pair_prompts`` prompts, ``pairs_per_prompt`` times with new seeds, judged;
ties counted and dropped):
  sft            the reference itself, untouched
  dpo beta=B     Diffusion-DPO for ``steps`` steps at each beta of the sweep: the pipeline's
                 own pass (``alignment.dpo.train_dpo``) with ``dpo.beta``, steps, LR and batch
                 overridden
  rft            rejection-sampling fine-tuning: the diffusion loss on the chosen images only,
                 same steps, batch and warm-up - the baseline at equal data; does the rejected
                 image add anything? The pipeline's SFT pass (``training.finetune.sft``) on them
Measured on ``num_eval`` held-out prompts (none of the pair prompts), one sample each with the
same seed for every arm (paired): the judge's win rate against SFT (ties half, Wilson
interval), the rate of large shapes read by the *evaluation* probe (the preferred attribute,
by a network the judge never saw), prompt accuracy on the attributes the prompt names (kind,
colour, background, count) and the drift from the reference (mean squared difference of the
two models' noise predictions on fixed noisy inputs).
"""
from __future__ import annotations

import numpy as np
import torch

from ..evaluation.stats import bootstrap_interval, decide
from . import alignment_base as base
from .runner import Arm, Experiment, Gate, Outcome, Row, Summary, constraint_row, size_row

NAMED = ("kind", "colour", "background", "count")  # what the eval prompts name (no size)
# the headline arm, fixed with the rule before the first run (eq. 14's beta*T, diffusers'
# beta_dpo). It was the pipeline's preset then; the laptop preset now uses 12500, the better arm
# here and, across three seeds, in make train (configs/laptop.yaml).
HEADLINE_BETA = 1250.0
MAX_ACC_DROP = 0.05


def _dpo(beta: float) -> str:
    return f"dpo beta={beta:g}"


def units(settings: dict, seeds: list[int]) -> list[dict]:
    if HEADLINE_BETA not in settings["betas"]:
        raise ValueError(f"dpo: betas must include the headline beta {HEADLINE_BETA:g}")
    arms = [{"arm": "sft"}, {"arm": _dpo(HEADLINE_BETA), "beta": HEADLINE_BETA}, {"arm": "rft"}]
    arms += [{"arm": _dpo(b), "beta": b} for b in settings["betas"] if b != HEADLINE_BETA]
    return [{**a, "seed": s} for a in arms for s in seeds]


def _judge():
    from ..alignment.preferences import Judge

    cap, scorer, _ = base.curation_models()
    return Judge(cap, scorer, "larger")


def pairs(st: dict):
    """The preference pairs (a ``datasets.Dataset``), built once from the SFT model."""
    from ..alignment.preferences import load_pairs, make_pairs, random_prompts

    sft = base.sft_model(st)

    def build(work):
        unet, text, sched = base.load(sft)
        prompts = random_prompts(st["pair_prompts"], seed=100, name_size=False)
        # a prompt with no size has 216 forms; more pairs than prompts: new seeds, same prompts
        ds = make_pairs(base.sampler(st, unet, text, sched), prompts, _judge(), seed=0,
                        rounds=st["pairs_per_prompt"])
        ds.save_to_disk(str(work / "pairs"))
        return {"n": len(ds), "ties": int(sum(ds["tie"]))}

    key = {**base.base_settings(st), "pair_prompts": st["pair_prompts"],
           "pairs_per_prompt": st["pairs_per_prompt"], "judge": "larger", "judge_version": 2}
    return load_pairs(base._cached("pairs", key, build) / "pairs")


def eval_prompts(st: dict, train_prompts) -> list[str]:
    from ..alignment.preferences import random_prompts

    return random_prompts(st["num_eval"], seed=200, exclude=set(train_prompts), name_size=False)


class _Chosen(torch.utils.data.Dataset):
    """The chosen images of the non-tied pairs, as an ordinary image-caption data set."""

    def __init__(self, pair_data):
        self.pairs = pair_data

    def __len__(self):
        return len(self.pairs)

    def __getitems__(self, idx):
        return [{"image": it["image_w"], "caption": it["caption"]}
                for it in self.pairs.__getitems__(idx)]


def drift(policy, reference, scheduler, text, prompts: list[str], resolution: int,
          seed: int = 0) -> float:
    """Mean squared difference of the two models' noise predictions, per pixel, on fixed noisy
    real images of the prompts (one draw of noise and timestep per image)."""
    from ..evaluation.validation import real_images

    g = torch.Generator().manual_seed(seed)
    x0 = real_images(prompts, len(prompts), resolution, seed)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=g)
    xt = scheduler.add_noise(x0, noise, t)
    emb, mask = text.encode(prompts)
    with torch.no_grad():
        a = policy(xt, t, emb, encoder_attention_mask=mask).sample
        b = reference(xt, t, emb, encoder_attention_mask=mask).sample
    return float(((a - b) ** 2).mean())


def run_unit(unit: dict, st: dict) -> dict:
    """Train one arm (or none, for sft), then sample and measure the held-out prompts."""
    import time

    from ..alignment.dpo import train_dpo
    from ..alignment.preferences import PairDataset
    from ..training.finetune import sft as train_sft
    from .common import probe

    sft = base.sft_model(st)
    data = pairs(st)
    prompts = eval_prompts(st, data["prompt"])
    ref, text, sched = base.load(sft)
    out, t0 = {}, time.perf_counter()
    policy = ref
    if "beta" in unit:  # the pipeline's DPO pass (alignment.dpo.train_dpo) at this arm's beta
        cfg = base.config(st, f"dpo-{unit['beta']:g}", seed=unit["seed"],
                          **{"dpo.beta": unit["beta"], "dpo.steps": st["steps"],
                             "dpo.lr": st["dpo_lr"], "dpo.batch_size": st["batch_size_pairs"]})
        with base.scratch(cfg.name) as work:
            trainer = train_dpo(cfg, sft, data, work, progress=False)
        logged = [r for r in trainer.history if "dpo/implicit_acc" in r]
        last = logged[-max(1, len(logged) // 4):]
        out["implicit_acc"] = float(np.mean([r["dpo/implicit_acc"] for r in last]))
        out["reward_margin"] = float(np.mean([r["dpo/reward_margin"] for r in last]))
    elif unit["arm"] == "rft":  # the pipeline's SFT pass (training.finetune.sft) on the chosen
        pd = PairDataset(data)  # images, with DPO's steps, batch and warm-up
        cfg = base.config(st, "rft", seed=unit["seed"],
                          **{"sft.steps": st["steps"], "sft.warmup_steps": st["steps"] // 10,
                             "sft.batch_size": min(st["batch_size_pairs"], len(pd))})
        with base.scratch(cfg.name) as work:
            trainer = train_sft(cfg, sft, _Chosen(pd), work, progress=False)
    if unit["arm"] != "sft":
        policy = trainer.ema.shadow.eval()
        out["train_seconds"] = time.perf_counter() - t0
    images = base.sampler(st, policy, text, sched)(prompts, st["eval_seed"])
    judge = _judge().score(images, prompts)
    pred = probe().predict(images)
    from ..data.captions import parse_caption

    named_ok = []
    for i, p in enumerate(prompts):
        asked = parse_caption(p)
        named_ok.append(all(int(pred[k][i]) == (asked[k] - (k == "count")) for k in NAMED))
    out.update(area=judge["area"].tolist(), match=judge["match"].tolist(), large=(pred["size"] == 1).int().tolist(),
               named_ok=[int(x) for x in named_ok],
               drift=drift(policy, ref, sched, text, prompts[:64], st["resolution"]))
    if st.get("keep_images"):
        out["images"] = images[: st["keep_images"]].tolist()
    return out


def _wilson(name: str, metric: str, hits, n_what: str = "held-out prompts") -> Arm:
    from ..evaluation.stats import wilson_interval

    k, n = float(sum(hits)), len(hits)
    lo, hi = wilson_interval(k, n)
    return Arm(name, metric, k / n, lo, hi, n=n, n_what=n_what, interval="Wilson")


def wins(a: dict, b: dict) -> list[float]:
    """Per prompt: 1 if the judge prefers a's image, 0.5 for a tie (neither preferred), else 0.
    a, b: {"match": [...], "area": [...]} per prompt, as ``Judge(mode="larger")`` scores them."""
    out = []
    for ma, aa, mb, ab in zip(a["match"], a["area"], b["match"], b["area"]):
        first = ma > mb or (ma == mb and aa > ab)
        second = mb > ma or (mb == ma and ab > aa)
        out.append(1.0 if first else 0.0 if second else 0.5)
    return out


def summarize(s: Summary) -> Outcome:
    st = s.settings
    out = {a: o[0] for a, o in s.by_arm().items()}
    ref = out["sft"]
    arms, details = [], {"arms": {}}
    acc_sft = float(np.mean(ref["named_ok"]))
    for name, o in out.items():
        arms.append(_wilson(f"{name}: large shapes", "share read as large by the eval probe",
                            o["large"]))
        arms.append(_wilson(f"{name}: named-attribute accuracy",
                            "kind, colour, background and count all read back", o["named_ok"]))
        d = {"large": float(np.mean(o["large"])), "named_acc": float(np.mean(o["named_ok"])),
             "area": float(np.mean(o["area"])), "drift": o["drift"],
             "implicit_acc": o.get("implicit_acc"), "reward_margin": o.get("reward_margin"),
             "train_seconds": o.get("train_seconds")}
        if name != "sft":
            w = _wilson(f"{name}: win rate vs SFT", "judge prefers it to SFT's image (ties 1/2)",
                        wins(o, ref))
            arms.append(w)
            d.update(win_rate=w.value, win_lo=w.lo, win_hi=w.hi,
                     acc_drop=acc_sft - d["named_acc"])
        details["arms"][name] = d
    head = out[_dpo(HEADLINE_BETA)]
    vs_rft = _wilson(f"{_dpo(HEADLINE_BETA)}: win rate vs rft",
                     "judge prefers DPO's image to RFT's (ties 1/2)", wins(head, out["rft"]))
    arms.append(vs_rft)
    headline = next(a for a in arms if a.name == f"{_dpo(HEADLINE_BETA)}: win rate vs SFT")
    drop = details["arms"][_dpo(HEADLINE_BETA)]["acc_drop"]
    verdict, reason = decide(headline.lo, headline.hi, 0.5, "above")
    # the accuracy cost is a side constraint with its own paired interval (same prompts, same
    # sampling seeds in both arms), never a silent flip of the win rate's verdict
    drop_fn = lambda a, b: float(np.mean(a) - np.mean(b))
    lo, hi = bootstrap_interval([ref["named_ok"], head["named_ok"]], drop_fn, paired=True)
    drop_arm = Arm(f"{_dpo(HEADLINE_BETA)}: named-attribute accuracy drop", "SFT - DPO, paired "
                   "by prompt", drop, lo, hi, n=len(head["named_ok"]), n_what="prompts",
                   interval="bootstrap (paired)")
    arms.append(drop_arm)
    rows = [Row("DPO's images win against SFT's", "claim", headline,
                "reproduced if the Wilson interval lies above 0.5", verdict, reason),
            size_row(headline, 2 / 3, "published SDXL-DPO win rate"),
            constraint_row(f"named-attribute accuracy drops at most {MAX_ACC_DROP}", drop_arm,
                           MAX_ACC_DROP, "below")]
    reason += (f"; win rate {headline.value:.3f} (goal >= 0.65); accuracy drop {drop:+.3f}; "
               f"vs RFT {vs_rft.value:.3f} [{vs_rft.lo:.3f}, {vs_rft.hi:.3f}]; "
               "published: ~2/3 (SDXL-DPO vs SDXL)")
    p = pairs(st)
    details["pairs"] = {"n": len(p), "ties": int(sum(p["tie"])),
                        "chosen_area": float(np.mean(p["chosen_area"])),
                        "rejected_area": float(np.mean(p["rejected_area"]))}
    details["betas"] = sorted(st["betas"])
    return Outcome(arms, headline, verdict, reason, _figures(s, details), details, rows=rows,
                   gate_values={"sft_named_acc": acc_sft})


def _figures(s: Summary, d: dict) -> list[str]:
    from matplotlib.figure import Figure

    betas = d["betas"]
    a = d["arms"]
    fig = Figure(figsize=(10, 3.8))
    ax, bx = fig.subplots(1, 2)
    wr = [a[_dpo(b)]["win_rate"] for b in betas]
    err = [[a[_dpo(b)]["win_rate"] - a[_dpo(b)]["win_lo"] for b in betas],
           [a[_dpo(b)]["win_hi"] - a[_dpo(b)]["win_rate"] for b in betas]]
    ax.errorbar(betas, wr, yerr=err, fmt="o-", capsize=4, label="DPO vs SFT (judge)")
    ax.axhline(a["rft"]["win_rate"], color="tab:green", ls="--", label="RFT vs SFT")
    ax.axhline(0.5, color="k", lw=1)
    ax.axhline(2 / 3, color="tab:red", ls=":", label="published ~2/3")
    ax.plot(betas, [a[_dpo(b)]["named_acc"] for b in betas], "s-", color="tab:purple",
            label="named-attribute accuracy")
    ax.axhline(a["sft"]["named_acc"], color="tab:purple", ls=":", lw=1)
    ax.set(xscale="log", xlabel="beta (eq. 14's beta*T)", ylim=(0, 1.05),
           title="win rate (95% Wilson) and accuracy")
    ax.legend(fontsize=7)
    bx.plot(betas, [a[_dpo(b)]["drift"] for b in betas], "o-", label="DPO")
    bx.axhline(a["rft"]["drift"], color="tab:green", ls="--", label="RFT")
    bx.set(xscale="log", yscale="log", xlabel="beta", ylabel="mean (eps_theta - eps_ref)^2",
           title="drift from the reference")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(s.figure_dir / "beta_sweep.png", dpi=120)
    names = [n for n in ("sft", _dpo(HEADLINE_BETA), "rft") if "images" in
             dict(zip([u["arm"] for u in s.units], s.outputs)).get(n, {})]
    figs = ["beta_sweep.png"]
    if names:
        by = dict(zip([u["arm"] for u in s.units], s.outputs))
        fig = Figure(figsize=(8, 1.2 * len(names) + 0.5))
        axes = np.atleast_1d(fig.subplots(len(names), 1))
        for ax, n in zip(axes, names):
            x = (torch.tensor(by[n]["images"]) + 1) / 2
            ax.imshow(torch.cat(list(x.clamp(0, 1)), dim=2).permute(1, 2, 0).numpy())
            ax.set_axis_off()
            ax.set_title(n, fontsize=8, loc="left")
        fig.tight_layout()
        fig.savefig(s.figure_dir / "samples.png", dpi=120)
        figs.append("samples.png")
    return figs


EXPERIMENT = Experiment(
    name="dpo",
    claim="Diffusion-DPO on judged pairs of the SFT model's own samples teaches it the judge's "
          "taste: the DPO model beats SFT in the judge's eyes on held-out prompts, without losing "
          "the attributes the prompt names (SDXL-DPO was preferred ~2/3 of the time over SDXL).",
    rule="Headline: the judge's win rate of DPO at beta=1250 against SFT on held-out prompts "
         "(one sample each, the same seed; ties count 1/2), 95% Wilson interval over prompts. "
         "Reproduced if the interval lies above 0.5; not reproduced if it lies below 0.5; "
         "otherwise inconclusive. Two rows of their own: its size against the published ~2/3, "
         "and the side constraint that named-attribute accuracy falls by at most 0.05 (paired "
         "bootstrap over prompts: held if the interval of the drop lies below 0.05). The goal "
         "of 0.65 and the other betas and RFT are reported, not part of the verdict.",
    lecture="08_post_training_alignment",
    anchor="SDXL-DPO preferred ~2/3 over SDXL (Wallace et al. 2024, arXiv 2311.12908; 851k "
           "Pick-a-Pic pairs, beta 5000 in their convention = 2500 in ours)",
    full_minutes=6.0,  # measured 5.6 min with the base cached; the base itself ~12 min once
    scales={
        "fast": {**base.FAST, "pair_prompts": 4, "pairs_per_prompt": 2, "num_eval": 8, "betas": [125.0, 1250.0, 12500.0],
                 "steps": 2, "batch_size_pairs": 4, "dpo_lr": 1e-4, "eval_seed": 7,
                 "keep_images": 4},
        "full": {**base.FULL, "pair_prompts": 96, "pairs_per_prompt": 2, "num_eval": 120, "betas": [125.0, 1250.0, 12500.0],
                 "steps": 120, "batch_size_pairs": 16, "dpo_lr": 1e-4, "eval_seed": 7,
                 "keep_images": 12},
    },
    default_seeds={"fast": 1, "full": 1},
    units=units, run_unit=run_unit, summarize=summarize, version=3, rule_fixed="2026-12-08",
    # the model DPO starts from must draw what it is asked: otherwise "larger" wins by noise
    gates=(Gate("SFT model: kind, colour, background and count all read back (the experiment's "
                "held-out prompts)", "sft_named_acc", ">=", 0.6),))


