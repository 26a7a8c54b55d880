"""Experiment `sft`: the finishing pass on a small curated set raises quality, and what it costs.

Emu (Dai et al. 2023, arXiv 2309.15807) fine-tunes a pre-trained model on a few thousand images
of very high aesthetic quality and reports that quality, not quantity, of that data decides the
result (human raters preferred the fine-tuned model 82.9% of the time on visual appeal). Here
the pre-trained base (``alignment_base.pretrained``, web data with blurry, noisy and off-centre
images) is fine-tuned on the curation aesthetic head's top ``sft_fraction`` of its data
(``alignment_base.sft_model``), and both models draw the same prompts with the same seeds:

  aesthetic     the curation aesthetic head's score of the samples (0-10)
  domain-FID    against the high-quality set: clean, centred renders of the same prompts
                (``evaluation.validation.real_images``), on the evaluation probe's features
  accuracy      prompt accuracy, every named attribute read back by the evaluation probe
  diversity     mean probe-feature distance between the two samples of a prompt (two seeds):
                fine-tuning on a narrow set can narrow what the model draws
"""
from __future__ import annotations

import numpy as np

from ..evaluation.stats import bootstrap_interval, decide, wilson_interval
from . import alignment_base as base
from .runner import Arm, Experiment, Gate, Outcome, Summary

ARMS = ("pretrained", "sft")


def units(settings: dict, seeds: list[int]) -> list[dict]:
    return [{"arm": a, "seed": s} for a in ARMS for s in seeds]


def run_unit(unit: dict, st: dict) -> dict:
    """Two samples of each validation prompt; their features, scores and probe readings."""
    from ..data.captions import parse_caption
    from ..evaluation.validation import validation_prompts
    from .common import probe

    final = base.pretrained(st, filtered=True) if unit["arm"] == "pretrained" else base.sft_model(st)
    unet, text, sched = base.load(final)
    fn = base.sampler(st, unet, text, sched)
    _, scorer, _ = base.curation_models()
    prompts = validation_prompts(st["num_prompts"])
    out = {"features": [], "aesthetic": [], "all_ok": []}
    for k in range(2):
        images = fn(prompts, st["eval_seed"] + k)
        pred = probe().predict(images)
        ok = []
        for i, p in enumerate(prompts):
            asked = parse_caption(p)
            ok.append(int(all(int(pred[a][i]) == v - (a == "count") for a, v in asked.items())))
        out["features"].append(probe().features(images).tolist())
        out["aesthetic"].append(scorer.score(images).tolist())
        out["all_ok"].append(ok)
        if k == 0 and st.get("keep_images"):
            out["images"] = images[: st["keep_images"]].tolist()
    if unit["arm"] == "sft":
        from ..data.shapes import sample_scene

        world = base._world(st)
        pos = base.info(final.parent)["positions"]
        out["true_aesthetic_sft_data"] = float(np.mean([sample_scene(world, i)["aesthetic"] for i in pos]))
        out["true_aesthetic_web"] = float(np.mean([sample_scene(world, i)["aesthetic"]
                                                   for i in range(st["num_train"])]))
        out["sft_images"] = len(pos)
    return out


def _fid(features: np.ndarray, ref) -> float:
    from ..evaluation.fid import fid

    return float(fid(features, ref).value)


def summarize(s: Summary) -> Outcome:
    from ..evaluation.fid import FeatureStats
    from ..evaluation.validation import real_images, validation_prompts
    from .common import probe

    st = s.settings
    out = {a: o[0] for a, o in s.by_arm().items()}
    prompts = validation_prompts(st["num_prompts"])
    ref = FeatureStats.of(probe().features(real_images(prompts, st["num_reference"],
                                                       st["resolution"], seed=5)))
    arms, details = [], {"arms": {}}
    feats, aes, div = {}, {}, {}
    for a in ARMS:
        o = out[a]
        f = np.asarray(o["features"])  # (2, P, D)
        feats[a], aes[a] = f, np.asarray(o["aesthetic"]).mean(axis=0)  # per prompt
        div[a] = np.linalg.norm(f[0] - f[1], axis=1)  # per prompt
        ok = [x for row in o["all_ok"] for x in row]
        lo, hi = bootstrap_interval([aes[a]], np.mean)
        arms.append(Arm(f"{a}: aesthetic score", "curation head's score, mean of 2 samples per "
                        "prompt", float(aes[a].mean()), lo, hi, n=len(aes[a]), n_what="prompts",
                        interval="bootstrap"))
        fid_value = _fid(f.reshape(-1, f.shape[-1]), ref)
        arms.append(Arm(f"{a}: domain-FID vs the HQ set", f"probe features, {f.shape[0] * f.shape[1]}"
                        f" samples vs {st['num_reference']} clean renders", fid_value,
                        n=f.shape[0] * f.shape[1], n_what="samples", interval="none"))
        k = float(sum(ok))
        arms.append(Arm(f"{a}: prompt accuracy", "every named attribute read back", k / len(ok),
                        *wilson_interval(k, len(ok)), n=len(ok), n_what="samples", interval="Wilson"))
        lo, hi = bootstrap_interval([div[a]], np.mean)
        arms.append(Arm(f"{a}: diversity", "probe-feature distance between a prompt's two "
                        "samples", float(div[a].mean()), lo, hi, n=len(div[a]), n_what="prompts",
                        interval="bootstrap"))
        details["arms"][a] = {"aesthetic": float(aes[a].mean()), "fid": fid_value,
                              "prompt_acc": k / len(ok), "diversity": float(div[a].mean())}
    diff = lambda x, y: float(np.mean(x) - np.mean(y))
    lo, hi = bootstrap_interval([aes["sft"], aes["pretrained"]], diff, paired=True)
    headline = Arm("aesthetic score sft - pretrained", "paired by prompt and seed",
                   diff(aes["sft"], aes["pretrained"]), lo, hi, n=len(aes["sft"]),
                   n_what="prompts", interval="bootstrap (paired)")
    lo, hi = bootstrap_interval([div["sft"], div["pretrained"]], diff, paired=True)
    cost = Arm("diversity sft - pretrained", "below 0: SFT narrows what it draws",
               diff(div["sft"], div["pretrained"]), lo, hi, n=len(div["sft"]), n_what="prompts",
               interval="bootstrap (paired)")
    arms += [headline, cost]
    verdict, reason = decide(headline.lo, headline.hi, 0.0, "above")
    d = details["arms"]
    reason += (f"; domain-FID vs the HQ set {d['pretrained']['fid']:.0f} -> {d['sft']['fid']:.0f}; "
               f"diversity {cost.value:+.3g} [{cost.lo:.3g}, {cost.hi:.3g}]")
    details["data"] = {k: out["sft"][k] for k in ("true_aesthetic_sft_data", "true_aesthetic_web",
                                                   "sft_images")}
    return Outcome(arms, headline, verdict, reason, _figures(s, out), details,
                   gate_values={"base_prompt_acc": d["pretrained"]["prompt_acc"]})


def _figures(s: Summary, out: dict) -> list[str]:
    import torch
    from matplotlib.figure import Figure

    if not all("images" in out[a] for a in ARMS):
        return []
    fig = Figure(figsize=(8, 3))
    for ax, a in zip(fig.subplots(len(ARMS), 1), ARMS):
        x = (torch.tensor(out[a]["images"]) + 1) / 2
        ax.imshow(torch.cat(list(x.clamp(0, 1)), dim=2).permute(1, 2, 0).numpy())
        ax.set_axis_off()
        ax.set_title(a, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(s.figure_dir / "samples.png", dpi=120)
    return ["samples.png"]


EXPERIMENT = Experiment(
    name="sft",
    claim="A short finishing pass on the aesthetic top tenth of the data raises the aesthetic "
          "score of the samples and brings them closer to the high-quality set.",
    rule="Headline: aesthetic score (curation head) of SFT minus pre-trained samples, the same "
         "prompts and seeds, 95% paired bootstrap over prompts. Reproduced if the interval lies "
         "above 0; not reproduced if below 0; otherwise inconclusive. Domain-FID against the "
         "high-quality set, prompt accuracy and the diversity cost are reported beside it.",
    lecture="08_post_training_alignment",
    anchor="Emu (Dai et al. 2023, arXiv 2309.15807): fine-tuning on ~2k photogenic images, "
           "preferred 82.9% of the time on visual appeal",
    full_minutes=1.0,  # measured 0.6 min with the base cached
    scales={"fast": {**base.FAST, "num_prompts": 8, "num_reference": 32, "eval_seed": 21,
                     "keep_images": 4},
            "full": {**base.FULL, "num_prompts": 96, "num_reference": 480, "eval_seed": 21,
                     "keep_images": 12}},
    default_seeds={"fast": 1, "full": 1},
    units=units, run_unit=run_unit, summarize=summarize, version=1, rule_fixed="2026-12-02",
    gates=(Gate("pre-trained base: every named attribute read back (this experiment's prompts)",
                "base_prompt_acc", ">=", 0.6),))
