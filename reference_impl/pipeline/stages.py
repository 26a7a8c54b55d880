"""What each lifecycle stage does: ``stage(p, out) -> metrics``, a few calls into the library.

``p`` is the running ``Pipeline`` (its config, the shared models, and the declared inputs:
``p.input("stage/file")``); ``out`` is the stage's own folder. Orchestration (order, resume,
the read/write contract) is in ``__init__.py``; the report page in ``evaluation/report.py``.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from datasets import concatenate_datasets
from torch.utils.data import Subset

from ..adapters import lora as lora_lib
from ..alignment import preferences as prefs
from ..alignment.dpo import train_dpo
from ..curation import aesthetic
from ..curation import safety as safety_lib
from ..curation.aesthetic import AestheticScorer
from ..curation.captioner import AutoCaptioner, recaption
from ..curation.safety import SafetyFilter
from ..data.captions import HAZARD_PHRASE, names_prompt_attributes, parse_caption
from ..data.shapes import ShapesWorld, sample_scene
from ..data.vocab import SIZES
from ..diffusion.sampling import sample_with_config
from ..evaluation import report as report_lib
from ..evaluation.probe import get_probe
from ..evaluation.validation import save_grid, validation_prompts
from ..models.exported import load_scheduler, load_unet
from ..models.text_encoder import TextEncoder
from ..training.commands import build_validator
from ..training.finetune import measure
from ..training.finetune import pretrain as run_pretrain
from ..training.finetune import sft as run_sft
from .launch import num_processes, train_on_every_core
from .lifecycle import STAGES


# ------------------------------------------------------------------ shared models (lazy)
def captioner(p):
    return p.lazy("captioner", lambda: AutoCaptioner.load_or_train(progress=p.progress))


def scorer(p):
    return p.lazy("scorer", lambda: AestheticScorer.load_or_train(captioner(p)))


def safety_filter(p):
    return p.lazy("safety", lambda: SafetyFilter.load_or_train(captioner(p)))


def probe(p):
    return p.lazy("probe", lambda: get_probe(progress=p.progress))


def text(p):
    return p.lazy("text", lambda: TextEncoder(p.cfg.text.encoder, p.cfg.text.max_length))


def judge(p):
    return prefs.Judge(captioner(p), scorer(p), p.cfg.dpo.judge)


def model(p, stage: str):
    """(EMA unet, scheduler) of a stage's exported final/ (kept: several stages sample it)."""
    final = p.input(f"{stage}/final")
    return p.lazy(("model", stage), lambda: (load_unet(final).eval(), load_scheduler(final)))


def samples(p, stage: str, prompts: list[str], seed: int | None = None) -> torch.Tensor:
    """One image per prompt from a stage's model, with the config's sampler: (B, 3, R, R)."""
    unet, sched = model(p, stage)
    return sample_with_config(unet, text(p), sched, p.cfg.diffusion, prompts, p.res,
                              seed=p.cfg.eval.seed if seed is None else seed)


def web_data(p, resolution: int, hq_fraction: float | None = None, captions: bool = True):
    """The web data set at a resolution; with the auto-captions of the caption stage unless
    ``captions=False`` (the stage must have declared ``caption/captions.json``)."""
    world = p.world if hq_fraction is None else dataclasses.replace(p.world, hq_fraction=hq_fraction)
    override = None
    if captions:
        override = {int(k): v for k, v in p.read_json("caption/captions.json").items()}
    return ShapesWorld(world, p.cfg.data.num_train, resolution, caption_override=override)


def _useful(captions) -> float:
    captions = list(captions)
    return sum(map(names_prompt_attributes, captions)) / len(captions)


# ------------------------------------------------------------------ the stages
def web(p, out: Path) -> dict:
    """The web: ShapesWorld with file-name / alt-text / rich captions and some unsafe images."""
    scenes = [sample_scene(p.world, i) for i in range(p.cfg.data.num_train)]
    quality = {q: sum(s["caption_quality"] == q for s in scenes) for q in ("filename", "alt", "rich")}
    items = web_data(p, 32, captions=False).__getitems__(list(range(16)))
    save_grid(torch.stack([it["image"] for it in items]), out / "examples.png", nrow=8)
    (out / "examples.txt").write_text("\n".join(it["caption"] for it in items) + "\n")
    return {"n": len(scenes), "caption_quality": quality,
            "useful_captions": _useful(s["caption"] for s in scenes),
            "unsafe": sum(bool(s["unsafe"]) for s in scenes),
            "parse_check": bool(parse_caption(scenes[0]["captions"][2]))}


def caption(p, out: Path) -> dict:
    """Re-caption every web image with the auto-captioner (DALL-E 3's recipe)."""
    ds = web_data(p, 32, captions=False)
    scenes = [sample_scene(p.world, i) for i in range(len(ds))]
    truth, before = [s["captions"][2] for s in scenes], [s["caption"] for s in scenes]
    new = (recaption(ds, captioner(p), world_seed=p.world.seed) if p.cfg.curation.recaption
           else dict(enumerate(before)))
    (out / "captions.json").write_text(json.dumps({str(k): v for k, v in new.items()}))
    after = [new[i] for i in range(len(ds))]
    return {"n": len(ds), "useful_before": _useful(before), "useful_after": _useful(after),
            "exact_before": sum(a == t for a, t in zip(before, truth)) / len(ds),
            "exact_after": sum(a == t for a, t in zip(after, truth)) / len(ds)}


def safety(p, out: Path) -> dict:
    """Drop what the safety filter flags; measured against the world's ground truth."""
    ds = web_data(p, 32)
    if p.cfg.curation.safety_filter:
        kept, counts = safety_lib.filter_dataset(ds, safety_filter(p))
    else:
        kept, counts = list(range(len(ds))), {"total": len(ds), "dropped": 0, "kept": len(ds)}
    (out / "kept.json").write_text(json.dumps(kept))
    unsafe = torch.tensor([bool(sample_scene(p.world, i)["unsafe"]) for i in range(len(ds))])
    flagged = torch.ones(len(ds), dtype=torch.bool)
    flagged[kept] = False
    pr = safety_lib.precision_recall(flagged, unsafe)
    return {**counts, "precision": pr["precision"], "recall": pr["recall"],
            "n_unsafe": pr["n_unsafe"], "unsafe_left": int(unsafe[kept].sum())}


def train_pretrain(p, out: Path) -> dict:
    """The trainer and its curriculum, on the filtered, re-captioned web data (every rank)."""
    kept = p.read_json("safety/kept.json")
    cfg = dataclasses.replace(p.cfg, output_dir=str(out))
    trainer = run_pretrain(cfg, dataset_fn=lambda data_cfg, stage: Subset(
        web_data(p, stage.resolution, stage.hq_fraction), kept),
        validator=build_validator(cfg), progress=p.progress)
    final = [r for r in trainer.history if r.get("final")]  # rank 0 validates
    return {"steps": trainer.step, "train_images": len(kept), "final": final[-1] if final else {}}


def pretrain(p, out: Path) -> dict:
    """Pre-training (on every core, see launch.py); its final validation and curves."""
    run = train_on_every_core(p, "pretrain", out, train_pretrain)
    keep = ("val/prompt_acc", "val/prompt_acc/kind", "val/fid", "val_raw/prompt_acc", "val_raw/fid")
    m = {k: run["final"].get(k) for k in keep} if run["final"] else {}
    m.update(steps=run["steps"], train_images=run["train_images"], val_n=p.cfg.eval.num_prompts,
             processes=num_processes(p.cfg))
    m["figures"] = [str(f) for f in report_lib.plot_run(out)]
    return m


def curate(p, out: Path) -> dict:
    """Aesthetic top share of the filtered set: the SFT data."""
    kept = p.read_json("safety/kept.json")
    scores = aesthetic.score_dataset(Subset(web_data(p, p.res), kept), scorer(p))
    k = max(1, round(p.cfg.curation.sft_fraction * len(kept)))
    top = aesthetic.select_top_k(scores, k)
    chosen = [kept[i] for i in top.tolist()]
    (out / "sft_positions.json").write_text(json.dumps(chosen))
    true = {i: sample_scene(p.world, i)["aesthetic"] for i in kept}
    return {"n_in": len(kept), "k": k, "true_aesthetic_all": sum(true.values()) / len(kept),
            "true_aesthetic_selected": sum(true[i] for i in chosen) / k,
            "predicted_all": float(scores.mean()), "predicted_selected": float(scores[top].mean())}


def train_sft(p, out: Path) -> dict:
    """SFT's run (every rank) on the curated positions."""
    positions = p.read_json("curate/sft_positions.json")
    trainer = run_sft(p.cfg, p.input("pretrain/final"), Subset(web_data(p, p.res), positions),
                      out, progress=p.progress)
    return {"steps": trainer.step, "train_images": len(positions)}


def sft(p, out: Path) -> dict:
    """SFT from the pre-trained weights on the curated set; measured before and after."""
    prompts = validation_prompts(p.cfg.sft.num_eval_prompts)
    before = samples(p, "pretrain", prompts)
    run = train_on_every_core(p, "sft", out, train_sft)
    after = samples(p, "sft", prompts)  # its own output, just written
    save_grid(before, out / "before.png")
    save_grid(after, out / "after.png")
    return {"init": p.cfg.sft.init, "train_images": run["train_images"], "steps": run["steps"],
            "before": measure(before, prompts, probe(p), scorer(p)),
            "after": measure(after, prompts, probe(p), scorer(p))}


def pairs(p, out: Path) -> dict:
    """Two SFT samples per prompt, chosen / rejected by the stated judge."""
    d = p.cfg.dpo
    prompts = prefs.random_prompts(d.num_pairs, seed=p.cfg.seed + 100,
                                   name_size=d.prompts_name_size)
    rounds = [prefs.make_pairs(lambda ps, s: samples(p, "sft", ps, s), prompts, judge(p),
                               seed=p.cfg.seed + 2 * r) for r in range(d.pairs_per_prompt)]
    data = rounds[0] if len(rounds) == 1 else concatenate_datasets(rounds)
    data.save_to_disk(str(out / "pairs"))
    n = len(data)
    scores = {k[len("chosen_"):] for k in data.column_names if k.startswith("chosen_")}
    return {"n": n, "judge": d.judge, "ties": int(sum(data["tie"])),
            **{f"{side}_{k}": sum(data[f"{side}_{k}"]) / n for k in sorted(scores)
               for side in ("chosen", "rejected")},
            "decided_by_match": int(sum(a != b for a, b in zip(data["chosen_match"],
                                                                 data["rejected_match"]))),
            }


def _large_share(p, images) -> float:
    """Share of images whose shapes the evaluation probe reads as large."""
    return float((probe(p).predict(images)["size"] == SIZES.index("large")).float().mean())


def train_dpo_run(p, out: Path) -> dict:
    """DPO's run (every rank) from the SFT model on the pairs."""
    data = prefs.load_pairs(p.input("pairs/pairs"))
    trainer = train_dpo(p.cfg, p.input("sft/final"), data, out, progress=p.progress)
    logged = [r for r in trainer.history if "dpo/implicit_acc" in r]
    return {"steps": trainer.step, "pairs": len(data),
            "implicit_acc_last": logged[-1]["dpo/implicit_acc"] if logged else None,
            "reward_margin_last": logged[-1]["dpo/reward_margin"] if logged else None}


def dpo(p, out: Path) -> dict:
    """Diffusion-DPO from the SFT model; the judge's win rate on held-out prompts."""
    data = prefs.load_pairs(p.input("pairs/pairs"))
    run = train_on_every_core(p, "dpo", out, train_dpo_run)
    prompts = prefs.random_prompts(p.cfg.dpo.num_eval_prompts, seed=p.cfg.seed + 200,
                                   exclude=data["prompt"], name_size=p.cfg.dpo.prompts_name_size)
    seed = p.cfg.eval.seed + 1
    dpo_img, sft_img = samples(p, "dpo", prompts, seed), samples(p, "sft", prompts, seed)
    return {"beta": p.cfg.dpo.beta, **run,
            "win_rate_vs_sft": prefs.win_rate(judge(p), dpo_img, sft_img, prompts),
            # the preferred attribute, read by the evaluation probe (not the judge's pixels)
            "large_share": {"sft": _large_share(p, sft_img), "dpo": _large_share(p, dpo_img)},
            "dpo": measure(dpo_img, prompts, probe(p), scorer(p)),
            "sft": measure(sft_img, prompts, probe(p), scorer(p))}


def brand_images(p) -> ShapesWorld:
    """The brand's look: ``lora.num_images`` scenes, all in the brand style, rich captions."""
    return lora_lib.brand_images(p.cfg.data.world, p.cfg.lora.num_images, p.res)


def train_lora_run(p, out: Path) -> dict:
    """LoRA's run (every rank) on the DPO model; the adapter's numbers."""
    return lora_lib.train_lora(p.cfg, p.input("dpo/final"), brand_images(p), out,
                               progress=p.progress)


def lora(p, out: Path) -> dict:
    """A brand-look adapter on the DPO model; how often brand prompts come out in the style."""
    lc, base = p.cfg.lora, p.input("dpo/final")
    stats = train_on_every_core(p, "lora", out, train_lora_run)
    prompts = prefs.random_prompts(lc.num_eval_prompts, seed=p.cfg.seed + 300, brand=True)
    seed = p.cfg.eval.seed + 2
    base_img = samples(p, "dpo", prompts, seed)
    adapted = load_unet(base).eval()  # a fresh copy of the base
    lora_lib.load_lora(adapted, out / "adapter")  # the round trip: what a user of the file gets
    sched = model(p, "dpo")[1]
    lora_img = sample_with_config(adapted, text(p), sched, p.cfg.diffusion, prompts, p.res,
                                  seed=seed)
    lora_lib.merge_lora(adapted)
    merged_img = sample_with_config(adapted, text(p), sched, p.cfg.diffusion, prompts[:4], p.res,
                                    seed=seed)

    def style(imgs):  # share of images the probe reads as the brand style
        return float((probe(p).predict(imgs)["style"] == 1).float().mean())
    return {**stats, "brand_rate_base": style(base_img), "brand_rate_lora": style(lora_img),
            "n_eval": len(prompts),
            "merged_max_abs_diff": float((merged_img - lora_img[:4]).abs().max())}


def safety_check(p, out: Path) -> dict:
    """The output-side safety check on the final (DPO) model, ordinary and hazard prompts."""
    n = p.cfg.curation.num_check_samples
    plain = prefs.random_prompts(n, seed=p.cfg.seed + 400)
    hazard = [f"{q} {HAZARD_PHRASE}" for q in plain]
    return {name: safety_filter(p).check_outputs(samples(p, "dpo", prompts))[1]
            for name, prompts in (("plain", plain), ("hazard_prompts", hazard))}


def export(p, out: Path) -> dict:
    """The lifecycle's final model where a user looks for it: ``<output_dir>/final`` is the DPO
    model's final/ folder, with the brand LoRA adapter in ``final/lora/``."""
    final = p.root / "final"
    tmp = p.root / ".tmp-final"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(p.input("dpo/final"), tmp)
    shutil.copytree(p.input("lora/adapter"), tmp / "lora")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return {"final": str(final), "from": str(p.input("dpo/final")),
            "lora": str(final / "lora" / lora_lib.WEIGHT_NAME)}


def report(p, out: Path) -> dict:
    """report.md and report.html in the run folder: the headline table, every stage's numbers
    and figures."""
    names = STAGES[: STAGES.index("report")]
    metrics = {name: p.metrics(name) for name in names}
    figures = {name: sorted(p.dir(name).rglob("*.png")) for name in names}
    md, html = report_lib.lifecycle_report(p.root, p.cfg.name, metrics, figures)
    return {"report": str(md), "html": str(html)}


# the stages whose training runs on every core (launch.py): stage -> its training function, which
# each launched rank looks up here (rank.py)
TRAIN = {"pretrain": train_pretrain, "sft": train_sft, "dpo": train_dpo_run,
         "lora": train_lora_run}
