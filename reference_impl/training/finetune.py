"""Fine-tuning: SFT, DPO and LoRA are configs on the same ``Trainer.fit``.

Like nanoGPT's ``config/finetune_*.py``, a fine-tuning pass is the pre-training loop with a few
settings changed - nothing else. Each pass is a small config function, and all three run
through ``fine_tune`` (one function, below):

    pass  config function             starts from      data           loss / parameters
    SFT   sft_config (here)           pre-trained EMA  curated subset DiffusionLoss, all weights
    DPO   alignment.dpo.dpo_config    SFT EMA          pairs          DiffusionDPOLoss, all weights
    LoRA  adapters.lora.lora_config   DPO EMA          brand images   DiffusionLoss, adapters only

What ``finetune_config`` changes, and only that: one curriculum stage at the final resolution
with the pass's steps, LR and batch size (at most the data set's size), a constant LR after an
optional warm-up, no validation during the short run, a log record every step, a checkpoint
halfway and at the end, and plain shuffling (a subset has no per-scene class list for the balanced sampler). Everything
else - EMA, health checks, gradient clipping, resume, logging - is the trainer's, unchanged.

SFT, the "finishing pass": Stable Diffusion's later stages and Emu (Dai et al. 2023, "Emu:
Enhancing Image Generation Models Using Photogenic Needles in a Haystack", arXiv 2309.15807)
fine-tune a pre-trained model on a few thousand images of very high aesthetic quality; quality
of the data beats its quantity there. SFT starts from the pre-trained EMA weights by default
(``sft.init``): the EMA is the better model, and the one the pre-training reports measured.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from ..config import Config, StageConfig
from ..models.exported import load_unet
from .trainer import Trainer


def finetune_config(cfg: Config, output_dir: str | Path, name: str, steps: int, lr: float,
                    batch_size: int, warmup_steps: int = 0, num_examples: int | None = None) -> Config:
    """The run config of a fine-tuning pass (see the module docstring for what changes)."""
    batch = batch_size if num_examples is None else min(batch_size, num_examples)
    res = cfg.train.curriculum[-1].resolution
    train = dataclasses.replace(
        cfg.train, curriculum=[StageConfig(steps=steps, resolution=res, hq_fraction=None,
                                           batch_size=batch)],
        lr=lr, warmup_steps=min(warmup_steps, steps), batch_size=batch, validate_every=0,
        checkpoint_every=max(steps // 2, 1), lr_schedule="constant_with_warmup",
        inject_nan_at=[], log_every=1)
    data = dataclasses.replace(cfg.data, balance="none")
    return dataclasses.replace(cfg, name=name, output_dir=str(output_dir), train=train, data=data)


def sft_config(cfg: Config, output_dir: str | Path, num_examples: int | None = None) -> Config:
    """SFT: ``cfg.sft``'s steps, LR, batch size and warm-up at the final resolution."""
    s = cfg.sft
    return finetune_config(cfg, output_dir, f"{cfg.name}-sft", s.steps, s.lr, s.batch_size,
                           s.warmup_steps, num_examples)


def pretrain(cfg: Config, dataset_fn: Callable | None = None, validator=None,
             progress: bool = True, on_step: Callable | None = None) -> Trainer:
    """Pre-train ``cfg`` from scratch through its curriculum with ``Trainer.fit``; returns the
    trainer (its run exported to ``cfg.output_dir/final``). ``dataset_fn(data_cfg, stage)``
    replaces each stage's ShapesWorld (the pipeline: the safety-filtered, re-captioned web);
    ``validator`` measures along the way. The run resumes from its own checkpoints. The one
    entry for a pre-training run, as ``fine_tune`` is for a pass that starts from a model.
    """
    trainer = Trainer(cfg, resume=True, progress=progress, validator=validator,
                      dataset_fn=dataset_fn)
    trainer.fit(on_step=on_step)
    return trainer


def fine_tune(run_cfg: Config, init_from: str | Path, dataset: Dataset, init: str = "ema",
              adapt: Callable | None = None, loss: Callable | None = None,
              export: Callable | None = None, progress: bool = True,
              on_step: Callable | None = None) -> Trainer:
    """Train ``run_cfg`` on ``dataset`` with ``Trainer.fit``, starting from the ``init``
    weights ("ema" or "raw") of the exported ``init_from`` folder; returns the trainer.

    ``adapt(unet)`` changes the model before training (LoRA: freeze it, add adapters);
    ``loss(unet)`` builds the loss from the starting model (DPO: its frozen reference);
    ``export`` replaces the trainer's whole-model export (LoRA: the adapter file);
    ``on_step(trainer, rec)`` is ``Trainer.fit``'s step hook (what an experiment records per
    step). The run resumes from its own checkpoints in ``run_cfg.output_dir`` if it was
    interrupted.
    """
    unet = load_unet(init_from, init)
    if adapt is not None:
        adapt(unet)
    trainer = Trainer(run_cfg, resume=True, progress=progress, unet=unet,
                      loss=loss(unet) if loss is not None else None,
                      dataset_fn=lambda data_cfg, stage: dataset, export=export)
    trainer.fit(on_step=on_step)
    return trainer


def sft(cfg: Config, pretrained: str | Path, dataset: Dataset, output_dir: str | Path,
        progress: bool = True) -> Trainer:
    """The SFT pass in one call: ``fine_tune`` of ``sft_config`` from the pre-trained model
    (its final/ folder, ``sft.init`` weights) on the curated images. Writes
    ``output_dir/final``; returns the trainer."""
    if len(dataset) == 0:
        raise ValueError("the SFT set is empty (did curation filter everything out?)")
    return fine_tune(sft_config(cfg, output_dir), pretrained, dataset, init=cfg.sft.init,
                     progress=progress)


def measure(images, prompts: list[str], probe, scorer) -> dict:
    """What SFT should move: mean predicted aesthetic score (the curation scorer) and prompt
    accuracy (the evaluation probe reads back kind, colour and background), over n samples."""
    from ..evaluation.metrics import prompt_accuracy

    acc = prompt_accuracy(probe.predict(images), prompts)
    return {"aesthetic": float(scorer.score(images).mean()),
            "prompt_acc": acc["kind_colour_background"], "prompt_acc_all": acc["all_correct"],
            "n": len(images)}
