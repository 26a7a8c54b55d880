"""Fine-tuning on top of the trainer: SFT on a curated set, and a LoRA adapter for a brand look.

Both reuse ``Trainer`` unchanged - the same loss, EMA, health checks and logging - and differ
from pre-training only by their data (a subset, through ``dataset_fn``), a lower learning rate,
fewer steps at the final resolution, and (LoRA) which parameters train.

SFT, the "finishing pass": Stable Diffusion's later stages and Emu (Dai et al. 2023, "Emu:
Enhancing Image Generation Models Using Photogenic Needles in a Haystack", arXiv 2309.15807)
fine-tune a pre-trained model on a few thousand images of very high aesthetic quality; quality
of the data beats its quantity there. SFT starts from the pre-trained EMA weights by default
(``sft.init``): the EMA is the better model, and the one the pre-training reports measured.

LoRA (Hu et al. 2021, arXiv 2106.09685) freezes the UNet and trains only low-rank matrices in
the attention projections; its run (``train_lora``) lives in ``adapters/lora.py``, a later
layer than training.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.utils.data import Subset

from ..config import Config, StageConfig
from ..diffusion.sampling import sample
from ..models.exported import load_unet


def finetune_config(cfg: Config, output_dir: str | Path, steps: int, lr: float, batch_size: int,
                    warmup_steps: int = 0) -> Config:
    """The run config of a fine-tuning pass: one stage at the final resolution, its own LR."""
    res = cfg.train.curriculum[-1].resolution
    train = dataclasses.replace(
        cfg.train, curriculum=[StageConfig(steps=steps, resolution=res, hq_fraction=None,
                                           batch_size=batch_size)],
        lr=lr, warmup_steps=min(warmup_steps, steps), batch_size=batch_size, validate_every=0,
        checkpoint_every=max(steps // 2, 1), lr_schedule="constant_with_warmup",
        inject_nan_at=[])
    # a subset has no per-scene class list for the balanced sampler: shuffle it plainly
    data = dataclasses.replace(cfg.data, balance="none")
    return dataclasses.replace(cfg, output_dir=str(output_dir), train=train, data=data)


def subset_fn(make_dataset, positions: list[int] | None = None):
    """A ``dataset_fn`` for the trainer: ``make_dataset(resolution)``, restricted to positions."""
    if positions is not None and len(positions) == 0:
        raise ValueError("the subset to train on is empty (everything was filtered out?)")

    def fn(data_cfg, stage):
        ds = make_dataset(stage.resolution)
        return ds if positions is None else Subset(ds, list(positions))
    return fn


def sft(cfg: Config, pretrained: str | Path, make_dataset, positions: list[int],
        output_dir: str | Path, progress: bool = True):
    """Fine-tune the pre-trained model (``pretrained``: its final/ folder) on the curated
    positions of ``make_dataset(resolution)``. Writes ``output_dir/final``; returns the trainer.
    """
    from .trainer import Trainer

    s = cfg.sft
    run_cfg = dataclasses.replace(finetune_config(cfg, output_dir, s.steps, s.lr, s.batch_size,
                                                  s.warmup_steps), name=f"{cfg.name}-sft")
    trainer = Trainer(run_cfg, resume=True, progress=progress, unet=load_unet(pretrained, s.init),
                      dataset_fn=subset_fn(make_dataset, positions))
    trainer.fit()
    return trainer


def sample_images(unet, text, scheduler, cfg: Config, prompts: list[str], seed: int) -> torch.Tensor:
    """One image per prompt with the config's sampler: (B, 3, R, R) in [-1, 1]."""
    d = cfg.diffusion
    return sample(unet, text, prompts, cfg.train.curriculum[-1].resolution, scheduler,
                  sampler=d.sampler, steps=d.sample_steps, guidance_scale=d.guidance_scale,
                  guidance_rescale=d.guidance_rescale, seed=seed)


def measure(images: torch.Tensor, prompts: list[str], probe, scorer) -> dict:
    """What SFT should move: mean predicted aesthetic score (the curation scorer) and prompt
    accuracy (the evaluation probe reads back kind, colour and background), over n samples."""
    from ..evaluation.metrics import prompt_accuracy

    acc = prompt_accuracy(probe.predict(images), prompts)
    return {"aesthetic": float(scorer.score(images).mean()),
            "prompt_acc": acc["kind_colour_background"], "prompt_acc_all": acc["all_correct"],
            "n": len(images)}
