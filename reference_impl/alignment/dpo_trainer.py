"""Diffusion-DPO training: the trainer with a frozen reference model and a pair loss.

Wallace et al. 2024, "Diffusion Model Alignment Using Direct Preference Optimization",
arXiv 2311.12908, Algorithm 1 / eq. 14 (the loss itself lives in ``alignment/dpo.py``):

  1. the policy and the reference both start as the SFT model; the reference never trains;
  2. per pair draw one noise e and one timestep t, shared by the chosen image x_w and the
     rejected x_l (comparing errors under different draws would mostly measure the draw);
  3. policy and reference predict on x_w^t and x_l^t; the loss rewards the policy for lowering
     its error on x_w, relative to the reference, more than on x_l.

Everything else - optimizer, LR schedule, gradient clipping, EMA, health checks, checkpoints,
export - is the ordinary ``Trainer``: only ``micro_batch_loss`` changes. The DPO statistics
(implicit accuracy, reward margin, ...) go to metrics.jsonl beside the loss, as ``dpo/...``.
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from ..diffusion.objectives import per_sample_mse, training_target
from ..training.trainer import Trainer
from .dpo import dpo_loss_from_mse, pair_batch


class DPOTrainer(Trainer):
    """``Trainer`` whose batches are preference pairs (items: image_w, image_l, caption).

    ``unet``: the SFT model (the policy starts from it; a frozen copy becomes the reference);
    ``beta``: the DPO temperature (``cfg.dpo.beta``, diffusers convention, see dpo.py).
    """

    def __init__(self, cfg, unet: torch.nn.Module, beta: float, dataset_fn, progress: bool = True,
                 resume: bool = False):
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        # the reference is copied before training touches anything: it *is* the SFT model
        self.reference = copy.deepcopy(unet).eval().requires_grad_(False)
        self.beta = beta
        self._stats: list[dict] = []
        super().__init__(cfg, resume=resume, progress=progress, unet=unet, dataset_fn=dataset_fn)
        self.reference.to(self.device)

    def micro_batch_loss(self, batch: dict, inject_nan: bool = False):
        """DPO loss of a micro-batch of B pairs (scalar), and per-pair diagnostics."""
        x_w, x_l = batch["image_w"].to(self.device), batch["image_l"].to(self.device)
        b = x_w.shape[0]
        d = self.cfg.diffusion
        # rows i and B + i share noise and timestep (eq. 14 compares them under one draw)
        x0, noise, t = pair_batch(x_w, x_l, d.num_train_timesteps, generator=self.gen)
        noise, t = noise.to(self.device), t.to(self.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        target = training_target(d.prediction_type, x0, noise, self.noise_scheduler.alphas_cumprod, t)
        hidden, mask = self.text.encode(list(batch["caption"]) * 2)
        hidden, mask = hidden.to(self.device), mask.to(self.device)
        with self.accelerator.autocast():
            pred = self.unet(x_t, t, hidden, encoder_attention_mask=mask).sample
            with torch.no_grad():
                ref = self.reference(x_t, t, hidden, encoder_attention_mask=mask).sample
        mse, ref_mse = per_sample_mse(pred, target), per_sample_mse(ref, target)
        loss, stats = dpo_loss_from_mse(mse[:b], mse[b:], ref_mse[:b], ref_mse[b:], self.beta)
        self._stats.append(stats)
        if inject_nan:
            loss = loss * float("nan")
        return loss, {"t": t[:b].detach().cpu(), "mse": (0.5 * (mse[:b] + mse[b:])).detach().cpu()}

    def train_step(self, stream) -> dict:
        self._stats = []
        rec = super().train_step(stream)
        for k in self._stats[0] if self._stats else ():
            rec[f"dpo/{k}"] = sum(s[k] for s in self._stats) / len(self._stats)
        return rec


def dpo_config(cfg, output_dir):
    """The run config of the DPO pass (``cfg.dpo``: steps, lr, pairs per batch)."""
    from ..training.finetune import finetune_config

    p = cfg.dpo
    run = finetune_config(cfg, output_dir, p.steps, p.lr, p.batch_size, warmup_steps=p.steps // 10)
    # no caption dropout or noise offset: the loss compares two images under the same prompt
    diffusion = dataclasses.replace(run.diffusion, caption_dropout=0.0, noise_offset=0.0)
    return dataclasses.replace(run, name=f"{cfg.name}-dpo", diffusion=diffusion)


def train_dpo(cfg, sft_final, pairs, output_dir, progress: bool = True) -> DPOTrainer:
    """Diffusion-DPO from the SFT model (its final/ folder, EMA weights) on a pair dataset.
    Writes ``output_dir/final`` (the DPO model) and metrics.jsonl; returns the trainer."""
    from ..training.finetune import load_unet
    from .preferences import PairDataset

    data = PairDataset(pairs)
    run = dpo_config(cfg, output_dir)
    batch = min(run.train.batch_size, len(data))
    run = dataclasses.replace(run, train=dataclasses.replace(
        run.train, batch_size=batch, curriculum=[dataclasses.replace(run.train.curriculum[0],
                                                                    batch_size=batch)]))
    trainer = DPOTrainer(run, load_unet(sft_final, "ema"), cfg.dpo.beta,
                         dataset_fn=lambda data_cfg, stage: data, progress=progress, resume=True)
    trainer.fit()
    return trainer
