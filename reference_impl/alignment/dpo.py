"""Diffusion-DPO: align a diffusion model to preference pairs without a reward model.

Wallace et al. 2024, "Diffusion Model Alignment Using Direct Preference Optimization",
arXiv 2311.12908, eq. 14:

    L(theta) = -E log sigmoid( -beta T w(lambda_t) * (
                   ||e_w - e_theta(x_w^t, t)||^2 - ||e_w - e_ref(x_w^t, t)||^2
                 - (||e_l - e_theta(x_l^t, t)||^2 - ||e_l - e_ref(x_l^t, t)||^2) ) )

In words: the policy should lower its denoising error on the preferred image x_w *more than
the frozen reference does*, and raise it on the rejected image x_l. Each ``||.||^2 - ||.||^2``
is (minus) an implicit reward: how much better than the reference the policy explains a sample.

Convention: eq. 14 with w(lambda_t) = 1 and the paper's ``beta T`` folded into one constant,
written ``beta``; each squared error is the *mean over pixels* per sample:

    inside = -beta * ((mse_theta_w - mse_ref_w) - (mse_theta_l - mse_ref_l))
    loss   = -log sigmoid(inside), averaged over pairs.

This is exactly diffusers' examples/research_projects/diffusion_dpo/train_diffusion_dpo.py
(``logits = ref_diff - model_diff; loss = -logsigmoid(beta_dpo * logits)``, default 2500 for
SD 1.5), so ``beta`` here is that script's ``--beta_dpo``; tests/test_dpo_loss.py holds the two
equal. The official Diffusion-DPO code (SalesforceAIResearch/DiffusionDPO, train.py) writes
``-0.5 * beta_dpo`` instead (default 5000): its beta is twice ours. Differences of pixel-mean
errors are ~1e-3, hence the large beta. (Before this convention was fixed the code had the
1/2; the presets were halved to keep their measured behaviour: laptop 2500 -> 1250.)

Training (Algorithm 1): ``DiffusionDPOLoss`` is the loss the ordinary ``Trainer`` is given
(``loss=``); it holds the frozen reference model. Everything else - optimizer, schedule,
clipping, EMA, health checks, checkpoints, export, data parallelism - is the trainer's.
How DPO differs from SFT is ``DiffusionDPOLoss.__call__`` next to
``diffusion.objectives.DiffusionLoss.__call__``: pairs instead of images, one shared draw of
noise and timestep per pair, a second (frozen) model, and eq. 14 instead of the MSE.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F

from ..diffusion.objectives import per_sample_mse as _objective_mse
from ..training.finetune import fine_tune, finetune_config


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``diffusion.objectives.per_sample_mse`` (the trainer's error, (B, C, H, W) x 2 -> (B,)),
    with a clear error when a prediction and its target differ in shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return _objective_mse(pred, target)


def dpo_loss_from_mse(model_mse_w: torch.Tensor, model_mse_l: torch.Tensor,
                      ref_mse_w: torch.Tensor, ref_mse_l: torch.Tensor,
                      beta: float = 1250.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-DPO loss (eq. 14, the convention above) from per-sample MSEs, each (B,).

    Returns (scalar loss, stats). Stats:
      implicit_acc   fraction of pairs where the policy's implicit reward prefers the winner
                     (inside > 0; exactly 0 when policy == reference, a tie is no preference)
      reward_w/_l    mean implicit rewards -beta (mse_theta - mse_ref) of winners / losers
      reward_margin  mean of reward_w - reward_l (= mean inside term)
      model_mse, ref_mse  mean denoising error of policy / reference over both images
    """
    mses = (model_mse_w, model_mse_l, ref_mse_w, ref_mse_l)
    if len({tuple(m.shape) for m in mses}) != 1 or model_mse_w.ndim != 1:
        raise ValueError("the four MSEs must be 1-D tensors of the same length (one per pair), "
                         f"got shapes {[tuple(m.shape) for m in mses]}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    # Reference errors carry no gradient: the reference model is frozen.
    ref_mse_w, ref_mse_l = ref_mse_w.detach(), ref_mse_l.detach()
    reward_w = -beta * (model_mse_w - ref_mse_w)
    reward_l = -beta * (model_mse_l - ref_mse_l)
    inside = reward_w - reward_l
    loss = -F.logsigmoid(inside).mean()
    stats = {
        "implicit_acc": (inside > 0).float().mean().item(),
        "reward_w": reward_w.mean().item(),
        "reward_l": reward_l.mean().item(),
        "reward_margin": inside.mean().item(),
        "model_mse": 0.5 * (model_mse_w.mean() + model_mse_l.mean()).item(),
        "ref_mse": 0.5 * (ref_mse_w.mean() + ref_mse_l.mean()).item(),
    }
    return loss, stats


def dpo_loss(model_pred_w: torch.Tensor, model_pred_l: torch.Tensor,
             ref_pred_w: torch.Tensor, ref_pred_l: torch.Tensor,
             target_w: torch.Tensor, target_l: torch.Tensor,
             beta: float = 1250.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-DPO loss from the four predictions (each (B, C, H, W)) and their targets.

    The target is what the model is trained to predict: the shared noise e for
    epsilon-prediction (then target_w is target_l), or each image's own v for v-prediction.
    """
    return dpo_loss_from_mse(per_sample_mse(model_pred_w, target_w),
                             per_sample_mse(model_pred_l, target_l),
                             per_sample_mse(ref_pred_w, target_w),
                             per_sample_mse(ref_pred_l, target_l), beta)


class DiffusionDPOLoss:
    """The Diffusion-DPO loss for the trainer: batches of pairs (image_w, image_l, caption).

    ``policy``: the SFT model the policy starts from; a frozen copy of it becomes the reference
    (copied here, before training touches anything). ``beta``: see the convention above.
    Returns (loss, stats): ``t`` and ``mse`` (B,) per pair for the trainer's loss curve, and
    ``dpo/...`` scalars (implicit accuracy, rewards; see ``dpo_loss_from_mse``).
    """

    def __init__(self, policy: torch.nn.Module, beta: float):
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.beta = beta

    def to(self, device) -> DiffusionDPOLoss:
        self.reference.to(device)
        return self

    def __call__(self, unet, batch: dict, forward):
        x_w, x_l = batch["image_w"], batch["image_l"]
        if x_w.shape != x_l.shape:
            raise ValueError(f"winner {tuple(x_w.shape)} and loser {tuple(x_l.shape)} differ in shape")
        b = x_w.shape[0]
        # rows i and B + i share noise and timestep: eq. 14 compares them under one draw
        x = forward(torch.cat([x_w, x_l]), batch["caption"], repeat=2)
        mse = per_sample_mse(forward.predict(unet, x), x.target)
        with torch.no_grad():
            ref_mse = per_sample_mse(forward.predict(self.reference, x), x.target)
        loss, stats = dpo_loss_from_mse(mse[:b], mse[b:], ref_mse[:b], ref_mse[b:], self.beta)
        return loss, {"t": x.t[:b].detach().cpu(), "mse": (0.5 * (mse[:b] + mse[b:])).detach().cpu(),
                      **{f"dpo/{k}": v for k, v in stats.items()}}


def dpo_config(cfg, output_dir, num_pairs: int | None = None):
    """The run config of the DPO pass: ``cfg.dpo``'s steps, LR and pairs per batch (at most
    ``num_pairs``), warm-up over the first tenth (see ``training.finetune.finetune_config``)."""
    p = cfg.dpo
    run = finetune_config(cfg, output_dir, f"{cfg.name}-dpo", p.steps, p.lr, p.batch_size,
                          warmup_steps=p.steps // 10, num_examples=num_pairs)
    # no caption dropout or noise offset: the loss compares two images under the same prompt
    diffusion = dataclasses.replace(run.diffusion, caption_dropout=0.0, noise_offset=0.0)
    return dataclasses.replace(run, diffusion=diffusion)


def train_dpo(cfg, sft_final, pairs, output_dir, progress: bool = True):
    """The DPO pass in one call: ``fine_tune`` of ``dpo_config`` from the SFT model's EMA
    weights (its final/ folder) on a pair dataset, with ``DiffusionDPOLoss``. Writes
    ``output_dir/final`` (the DPO model) and metrics.jsonl; returns the trainer."""
    from .preferences import PairDataset

    data = PairDataset(pairs)
    return fine_tune(dpo_config(cfg, output_dir, len(data)), sft_final, data,
                     loss=lambda unet: DiffusionDPOLoss(unet, cfg.dpo.beta), progress=progress)
