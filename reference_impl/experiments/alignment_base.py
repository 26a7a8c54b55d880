"""The models Act III's experiments share, built once and cached: a web pre-training (with or
without the data safety filter) and the SFT model on top of the filtered one.

The experiments ``sft``, ``dpo`` and ``safety`` all start where the lifecycle's post-training
starts, so they share one pre-trained base instead of each paying for its own:

  pretrained(st, filtered)  the pipeline's pre-training stage: ``curation.safety.filter_dataset``
                            (``filtered=True``), then the ordinary ``Trainer`` on what is kept of
                            ShapesWorld's web (rich captions, a share ``unsafe_fraction`` of
                            hazard-sign images), at one resolution
  sft_model(st)             the pipeline's curate and SFT stages: ``curation.aesthetic.curate``
                            keeps the aesthetic top ``sft_fraction`` of the filtered web and
                            ``training.finetune.sft`` fine-tunes the filtered base on it (Emu,
                            arXiv 2309.15807)
  config(st, ...)           the run config at the base's settings; an experiment's own passes are
                            the library's (``train_dpo``, ``train_lora``, ``sft``) on it, with
                            their sections (``dpo.*``, ``lora.*``, ``sft.*``) overridden

Each model is an exported ``final/`` folder under ``.cache/experiments/_bases/``, named by the
hash of the settings that made it and built under a file lock, so two worker processes asking
at once train it once. Nothing here re-implements training: every run is the pipeline's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
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


def config(st: dict, name: str, seed: int = 0, **overrides):
    """The run config at the base's settings (``experiments.common.make_config``): pre-training
    (``pretrain_steps`` at ``resolution``) and the SFT section (``sft_steps``, ``sft_lr``, warm-up
    over a tenth); ``overrides`` ({"dpo.beta": 125.0, ...}) set the rest."""
    from .common import make_config

    sets = {"output_dir": str(cache_dir("experiments", "_work") / name),  # never the preset's own
            "model.preset": st["preset"], "data.num_train": st["num_train"],
            "data.world.unsafe_fraction": st["unsafe_fraction"],
            "data.world.caption_mix": [0.0, 0.0, 1.0],  # rich captions: the auto-captioned web
            "train.curriculum": [{"steps": st["pretrain_steps"], "resolution": st["resolution"],
                                  "batch_size": st["batch_size"]}],
            "train.batch_size": st["batch_size"], "train.lr": st["lr"],
            "train.warmup_steps": st["warmup_steps"], "train.lr_schedule": "linear",
            "sft.steps": st["sft_steps"], "sft.lr": st["sft_lr"],
            "sft.batch_size": st["batch_size"], "sft.warmup_steps": max(1, st["sft_steps"] // 10),
            "diffusion.sample_steps": st["sample_steps"],
            "diffusion.guidance_scale": st["guidance_scale"], **overrides}
    return make_config(sets, seed=seed, name=name)


@contextmanager
def scratch(name: str):
    """A fresh run folder for one pass (two workers never share one), removed afterwards."""
    path = cache_dir("experiments", "_work") / f"{name}-{uuid.uuid4().hex[:10]}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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


def _export(work: Path) -> None:
    """Keep a run's exported ``final/`` as ``work/final``; drop the rest of the run."""
    shutil.move(str(work / "run" / "final"), str(work / "final"))
    shutil.rmtree(work / "run")


def pretrained(st: dict, filtered: bool) -> Path:
    """The pre-trained base's exported ``final/`` folder (EMA and raw weights)."""
    def build(work: Path) -> dict:
        from ..curation.safety import filter_dataset
        from ..training.finetune import pretrain

        ds = web(st)
        kept = filter_dataset(ds, curation_models()[2])[0] if filtered else list(range(len(ds)))
        unsafe = [bool(ds.scene(i)["unsafe"]) for i in range(len(ds))]
        cfg = config(st, f"base-{'filtered' if filtered else 'unfiltered'}",
                     output_dir=str(work / "run"))
        # the pipeline's pre-training stage (pipeline/stages.py: train_pretrain), one process
        pretrain(cfg, dataset_fn=lambda data_cfg, stage: Subset(web(st, stage.resolution), kept),
                 progress=False)
        _export(work)
        return {"filtered": filtered, "train_images": len(kept),
                "unsafe_in_training": sum(unsafe[i] for i in kept), "unsafe_in_web": sum(unsafe)}

    return _cached("pretrain-" + ("filtered" if filtered else "unfiltered"),
                   {**base_settings(st), "filtered": filtered}, build) / "final"


def sft_positions(st: dict) -> list[int]:
    """The SFT set (the pipeline's curate stage): the aesthetic top ``sft_fraction`` of the
    safety-filtered web, in dataset order."""
    from ..curation.aesthetic import curate
    from ..curation.safety import filter_dataset

    _, scorer, safety = curation_models()
    ds = web(st)
    kept, _ = filter_dataset(ds, safety)
    top = curate(Subset(ds, kept), scorer, fraction=st["sft_fraction"])
    return sorted(kept[i] for i in top.tolist())


def sft_model(st: dict) -> Path:
    """The SFT model's exported ``final/`` folder: ``training.finetune.sft`` (the pipeline's SFT
    pass) from the filtered base's EMA on ``sft_positions``."""
    base = pretrained(st, filtered=True)

    def build(work: Path) -> dict:
        from ..training.finetune import sft

        positions = sft_positions(st)
        sft(config(st, "base"), base, Subset(web(st), positions), work / "run", progress=False)
        _export(work)
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
