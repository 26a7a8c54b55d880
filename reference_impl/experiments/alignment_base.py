"""The models Act III's experiments share, built once and cached: a web pre-training (with or
without the data safety filter) and the SFT model on top of the filtered one.

The experiments ``sft``, ``dpo`` and ``safety`` all start where the lifecycle's post-training
starts, so they share one pre-trained base instead of each paying for its own:

  pretrained(st, filtered)  the ordinary ``Trainer`` on ShapesWorld's web (rich captions, a
                            share ``unsafe_fraction`` of hazard-sign images), at one resolution;
                            ``filtered=True`` first drops what ``curation.safety`` flags
  sft_model(st)             the finishing pass (Emu, arXiv 2309.15807): the filtered model
                            fine-tuned on the aesthetic top ``sft_fraction`` of its data
  fine_tune(...)            one short run from an exported model with a given loss and data:
                            SFT, rejection-sampling fine-tuning and Diffusion-DPO alike

Each model is an exported ``final/`` folder under ``.cache/experiments/_bases/``, named by the
hash of the settings that made it and built under a file lock, so two worker processes asking
at once train it once. Every call into the trainer sits in this file (one place to update if
the fine-tuning API moves).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import torch
from torch.utils.data import Subset

from ..paths import build_lock, cache_dir, content_hash

# the keys of a scale's settings that make the base (everything else is the experiment's own)
BASE_KEYS = ("preset", "resolution", "num_train", "pretrain_steps", "batch_size", "lr",
             "warmup_steps", "unsafe_fraction", "sft_fraction", "sft_steps", "sft_lr",
             "sample_steps", "guidance_scale")
VERSION = 1
# Full scale: the laptop UNet at 16 px only (a quarter of a 32 px step; size, colour, kind and
# the hazard sign are all legible at 16 px), 800 steps of 32 images. Measured: 674 s and 700 s
# for the filtered and unfiltered bases built side by side on the shared 2-core box (load 2-5),
# then SFT 36 s and the dpo pairs 36 s; built once, every experiment after that loads them.
FULL = {"preset": "laptop", "resolution": 16, "num_train": 8000, "pretrain_steps": 800,
        "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "unsafe_fraction": 0.05,
        "sft_fraction": 0.1, "sft_steps": 60, "sft_lr": 2e-4, "sample_steps": 10,
        "guidance_scale": 3.0}
# Fast scale: a smoke test of the machinery (tiny UNet, a few steps); its numbers mean nothing.
FAST = {**FULL, "preset": "tiny", "num_train": 256, "pretrain_steps": 6, "batch_size": 8,
        "warmup_steps": 2, "sft_steps": 2, "sample_steps": 3}


def base_settings(st: dict) -> dict:
    return {k: st[k] for k in BASE_KEYS}


def config(st: dict, name: str, steps: int, lr: float, batch_size: int, warmup_steps: int,
           seed: int = 0, **overrides):
    """A one-stage run config at the base resolution (``experiments.common.make_config``)."""
    from .common import make_config

    # a scratch folder unless the caller names one: a run must never write into the preset's
    # own output_dir (runs/laptop, a user's pipeline run), and two workers never share one
    scratch = cache_dir("experiments", "_work") / f"{name}-{uuid.uuid4().hex[:10]}"
    sets = {"output_dir": str(scratch), "model.preset": st["preset"], "data.num_train": st["num_train"],
            "data.world.unsafe_fraction": st["unsafe_fraction"],
            "data.world.caption_mix": [0.0, 0.0, 1.0],  # rich captions: the auto-captioned web
            "train.curriculum": [{"steps": steps, "resolution": st["resolution"],
                                  "batch_size": batch_size}],
            "train.batch_size": batch_size, "train.lr": lr, "train.warmup_steps": warmup_steps,
            "diffusion.sample_steps": st["sample_steps"],
            "diffusion.guidance_scale": st["guidance_scale"], **overrides}
    return make_config(sets, seed=seed, name=name)


def _world(st: dict):
    """The laptop preset's world with the web's hazard-sign share and rich captions."""
    from ..config import load_config

    cfg = load_config("laptop")
    return dataclasses.replace(cfg.data.world, unsafe_fraction=st["unsafe_fraction"],
                               caption_mix=[0.0, 0.0, 1.0])


def web(st: dict, resolution: int | None = None):
    """The web the base learns from: ``num_train`` ShapesWorld scenes at the base resolution."""
    from ..data.shapes import ShapesWorld

    return ShapesWorld(_world(st), st["num_train"], resolution or st["resolution"])


def curation_models():
    """(captioner, aesthetic scorer, safety filter): the curation models, built once."""
    from ..curation.aesthetic import AestheticScorer
    from ..curation.captioner import AutoCaptioner
    from ..curation.safety import SafetyFilter

    cap = AutoCaptioner.load_or_train(progress=False)
    return cap, AestheticScorer.load_or_train(cap), SafetyFilter.load_or_train(cap)


def _cached(name: str, key: dict, build) -> Path:
    """The folder ``_bases/<name>-<hash>``: built by ``build(work_dir) -> info`` once."""
    path = cache_dir("experiments", "_bases") / f"{name}-{content_hash([VERSION, key])}"
    with build_lock(path):
        if not (path / "info.json").exists():
            work = path.with_name(path.name + ".work")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            t0 = time.perf_counter()
            info = build(work)
            info["build_seconds"] = time.perf_counter() - t0
            (work / "info.json").write_text(json.dumps(info, indent=1))
            shutil.rmtree(path, ignore_errors=True)
            os.replace(work, path)
    return path


def info(path: Path) -> dict:
    return json.loads((Path(path) / "info.json").read_text())


def fine_tune(cfg, dataset, unet=None, loss=None):
    """Train ``cfg`` on ``dataset`` (starting from ``unet``, with ``loss`` or the diffusion
    loss); returns the trainer (its ``ema.shadow`` and ``raw_unet`` are the results)."""
    from ..training.trainer import Trainer

    trainer = Trainer(cfg, progress=False, unet=unet, loss=loss,
                      dataset_fn=lambda data_cfg, stage: dataset)
    trainer.fit()
    run_dir = Path(cfg.output_dir)
    if run_dir.parent == cache_dir("experiments", "_work"):  # a scratch folder of ``config``
        shutil.rmtree(run_dir, ignore_errors=True)
    return trainer


def pretrained(st: dict, filtered: bool) -> Path:
    """The pre-trained base's exported ``final/`` folder (EMA and raw weights)."""
    def build(work: Path) -> dict:
        from ..curation.safety import filter_dataset

        ds = web(st)
        if filtered:
            kept, _ = filter_dataset(ds, curation_models()[2])
        else:
            kept = list(range(len(ds)))
        unsafe = [bool(ds.scene(i)["unsafe"]) for i in range(len(ds))]
        cfg = config(st, f"base-{'filtered' if filtered else 'unfiltered'}", st["pretrain_steps"],
                     st["lr"], st["batch_size"], st["warmup_steps"],
                     **{"train.lr_schedule": "linear", "output_dir": str(work / "run")})
        fine_tune(cfg, Subset(ds, kept))
        shutil.move(str(work / "run" / "final"), str(work / "final"))
        shutil.rmtree(work / "run")
        return {"filtered": filtered, "train_images": len(kept),
                "unsafe_in_training": sum(unsafe[i] for i in kept), "unsafe_in_web": sum(unsafe)}

    return _cached("pretrain-" + ("filtered" if filtered else "unfiltered"),
                   {**base_settings(st), "filtered": filtered}, build) / "final"


def sft_positions(st: dict) -> list[int]:
    """The SFT set: the aesthetic top ``sft_fraction`` of the safety-filtered web."""
    from ..curation.aesthetic import score_dataset, select_top_k
    from ..curation.safety import filter_dataset

    _, scorer, safety = curation_models()
    ds = web(st)
    kept, _ = filter_dataset(ds, safety)
    scores = score_dataset(Subset(ds, kept), scorer)
    k = max(1, round(st["sft_fraction"] * len(kept)))
    return sorted(kept[i] for i in select_top_k(scores, k).tolist())


def sft_model(st: dict) -> Path:
    """The SFT model's exported ``final/`` folder: the filtered base's EMA, fine-tuned."""
    base = pretrained(st, filtered=True)

    def build(work: Path) -> dict:
        from ..models.exported import load_unet

        positions = sft_positions(st)
        cfg = config(st, "base-sft", st["sft_steps"], st["sft_lr"], st["batch_size"],
                     max(1, st["sft_steps"] // 10),
                     **{"train.lr_schedule": "constant_with_warmup", "output_dir": str(work / "run")})
        fine_tune(cfg, Subset(web(st), positions), unet=load_unet(base, "ema"))
        shutil.move(str(work / "run" / "final"), str(work / "final"))
        shutil.rmtree(work / "run")
        return {"train_images": len(positions), "positions": positions}

    return _cached("sft", base_settings(st), build) / "final"


_TEXT = {}


def load(final: Path, ema: bool = True):
    """(unet in eval mode, text encoder, training scheduler) of an exported folder."""
    from ..models.exported import load_scheduler, load_unet
    from ..models.text_encoder import TextEncoder

    if "text" not in _TEXT:
        from ..config import load_config

        t = load_config("laptop").text
        _TEXT["text"] = TextEncoder(t.encoder, t.max_length)
    return load_unet(final, "ema" if ema else "raw").eval(), _TEXT["text"], load_scheduler(final)


def sampler(st: dict, unet, text, scheduler):
    """sample_fn(prompts, seed) -> (B, 3, R, R) in [-1, 1], with the base's sampler settings."""
    from ..diffusion.sampling import sample

    def fn(prompts: list[str], seed: int) -> torch.Tensor:
        with torch.no_grad():
            return sample(unet, text, prompts, st["resolution"], scheduler, sampler="ddim",
                          steps=st["sample_steps"], guidance_scale=st["guidance_scale"], seed=seed)
    return fn
