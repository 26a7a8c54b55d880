"""Fine-tuning on top of the trainer: SFT on a curated set, and a LoRA adapter for a brand look.

Both reuse ``Trainer`` unchanged - the same loss, EMA, health checks and logging - and differ
from pre-training only by their data (a subset, through ``dataset_fn``), a lower learning rate,
fewer steps at the final resolution, and (LoRA) which parameters train.

SFT, the "finishing pass": Stable Diffusion's later stages and Emu (Dai et al. 2023, "Emu:
Enhancing Image Generation Models Using Photogenic Needles in a Haystack", arXiv 2309.15807)
fine-tune a pre-trained model on a few thousand images of very high aesthetic quality; quality
of the data beats its quantity there. SFT starts from the pre-trained EMA weights by default
(``sft.init``): the EMA is the better model, and the one the pre-training reports measured.

LoRA (Hu et al. 2021, arXiv 2106.09685; ``adapters/lora.py``) freezes the UNet and trains only
low-rank matrices in the attention projections: a brand look from ~50 images, in a file of a
few hundred kB that can be loaded onto, merged into and removed from the base model.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from ..config import Config, StageConfig
from ..data.curriculum import BatchStream
from ..diffusion.sampling import sample


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


def load_unet(final_dir: str | Path, init: str = "ema") -> torch.nn.Module:
    """The UNet of an exported ``final/`` folder: its EMA (``init='ema'``) or raw weights."""
    if init not in ("ema", "raw"):
        raise ValueError(f"init must be 'ema' or 'raw', got {init!r}")
    from diffusers import UNet2DConditionModel

    folder = Path(final_dir) / ("unet_ema" if init == "ema" else "unet")
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist; pass a run's exported final/ folder")
    return UNet2DConditionModel.from_pretrained(folder).train()


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


def train_lora(cfg: Config, base: str | Path, dataset, output_dir: str | Path,
               progress: bool = True) -> dict:
    """Train a LoRA adapter on ``dataset`` (brand images with their captions) on top of the
    EMA weights of ``base`` (a final/ folder); save it to ``output_dir/adapter``.

    Returns the numbers of the run: trainable parameters and their fraction, adapter size
    (MB), training time (s), first/last loss. A plain loop over ``Trainer.train_step``: the
    adapter, not a whole model, is what this run exports.
    """
    from ..adapters.lora import adapter_size_mb, add_lora, save_lora
    from .trainer import Trainer

    lc = cfg.lora
    unet = load_unet(base, "ema")
    stats = add_lora(unet, lc.rank, lc.alpha)
    run_cfg = dataclasses.replace(finetune_config(cfg, output_dir, lc.steps, lc.lr, lc.batch_size),
                                  name=f"{cfg.name}-lora")
    trainer = Trainer(run_cfg, progress=progress, unet=unet)
    stream = BatchStream(dataset, run_cfg.data, min(lc.batch_size, len(dataset)), seed=cfg.seed)
    out = Path(output_dir)
    losses, t0 = [], time.perf_counter()
    with open(out / "metrics.jsonl", "w") as log:
        for _ in tqdm(range(lc.steps), desc="lora", disable=not progress, dynamic_ncols=True):
            rec = trainer.train_step(stream)
            losses.append(rec["loss"])
            log.write(json.dumps({k: v for k, v in rec.items() if not k.startswith("_")}) + "\n")
    seconds = time.perf_counter() - t0
    path = save_lora(trainer.raw_unet, out / "adapter")
    return {"trainable_params": stats["trainable"], "total_params": stats["total"],
            "trainable_fraction": stats["fraction"], "adapter_mb": adapter_size_mb(path.parent),
            "train_seconds": seconds, "steps": lc.steps, "num_images": len(dataset),
            "loss_first": losses[0], "loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
            "rank": lc.rank}


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
