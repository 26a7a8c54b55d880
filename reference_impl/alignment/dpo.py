"""Diffusion-DPO: align a diffusion model to preference pairs without a reward model.

Wallace et al. 2024, "Diffusion Model Alignment Using Direct Preference Optimization",
arXiv 2311.12908, eq. 14:

    L(theta) = -E log sigmoid( -beta T w(lambda_t) * (
                   ||e_w - e_theta(x_w^t, t)||^2 - ||e_w - e_ref(x_w^t, t)||^2
                 - (||e_l - e_theta(x_l^t, t)||^2 - ||e_l - e_ref(x_l^t, t)||^2) ) )

In words: the policy should lower its denoising error on the preferred image x_w *more than
the frozen reference does*, and raise it on the rejected image x_l. Each ``||.||^2 - ||.||^2``
is (minus) an implicit reward: how much better than the reference the policy explains a sample.

Convention used here, that of diffusers' examples/research_projects/diffusion_dpo/
train_diffusion_dpo.py: each squared error is the *mean over pixels* per sample,
w(lambda_t) = 1, and the paper's ``beta T`` is folded into one constant written ``beta``,
with a factor 1/2 in front:

    inside = -beta / 2 * ((mse_theta_w - mse_ref_w) - (mse_theta_l - mse_ref_l))
    loss   = -log sigmoid(inside), averaged over pairs.

So ``beta`` here is that script's ``--beta_dpo`` (default 2500 there, for SD 1.5), not the
paper's per-step beta. Differences of pixel-mean errors are ~1e-3, hence the large beta.

Plain tensors in, tensors out: the trainer owns the models, this file owns the maths.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion.objectives import per_sample_mse as _objective_mse


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``diffusion.objectives.per_sample_mse`` (the trainer's error, (B, C, H, W) x 2 -> (B,)),
    with a clear error when a prediction and its target differ in shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return _objective_mse(pred, target)


def dpo_loss_from_mse(model_mse_w: torch.Tensor, model_mse_l: torch.Tensor,
                      ref_mse_w: torch.Tensor, ref_mse_l: torch.Tensor,
                      beta: float = 2500.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-DPO loss (eq. 14, diffusers convention above) from per-sample MSEs, each (B,).

    Returns (scalar loss, stats). Stats:
      implicit_acc   fraction of pairs where the policy's implicit reward prefers the winner
                     (inside > 0; exactly 0 when policy == reference, a tie is no preference)
      reward_w/_l    mean implicit rewards -beta/2 (mse_theta - mse_ref) of winners / losers
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
    reward_w = -0.5 * beta * (model_mse_w - ref_mse_w)
    reward_l = -0.5 * beta * (model_mse_l - ref_mse_l)
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
             beta: float = 2500.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-DPO loss from the four predictions (each (B, C, H, W)) and their targets.

    The target is what the model is trained to predict: the shared noise e for
    epsilon-prediction (then target_w is target_l), or each image's own v for v-prediction.
    """
    return dpo_loss_from_mse(per_sample_mse(model_pred_w, target_w),
                             per_sample_mse(model_pred_l, target_l),
                             per_sample_mse(ref_pred_w, target_w),
                             per_sample_mse(ref_pred_l, target_l), beta)


def shared_noise_and_timesteps(x_w: torch.Tensor, x_l: torch.Tensor, num_train_timesteps: int,
                               generator: torch.Generator | None = None):
    """One noise tensor and one timestep per pair, used for *both* images of the pair.

    x_w, x_l: (B, C, H, W) winners and losers. Returns noise (B, C, H, W) and t (B,) long.
    Eq. 14 compares the two images under the same (e, t): with independent draws the
    difference of errors would be dominated by the draw rather than by the preference.
    """
    if x_w.shape != x_l.shape:
        raise ValueError(f"winner {tuple(x_w.shape)} and loser {tuple(x_l.shape)} differ in shape")
    noise = torch.randn(x_w.shape, generator=generator, dtype=x_w.dtype).to(x_w.device)
    t = torch.randint(0, num_train_timesteps, (x_w.shape[0],), generator=generator)
    return noise, t.to(x_w.device)


def pair_batch(x_w: torch.Tensor, x_l: torch.Tensor, num_train_timesteps: int,
               generator: torch.Generator | None = None):
    """Stack a pair batch for one forward pass: winners first, then losers.

    Returns x (2B, C, H, W), noise (2B, C, H, W) and t (2B,), where rows i and B + i share
    noise and timestep; split model outputs back with ``out.chunk(2)`` -> (pred_w, pred_l).
    """
    noise, t = shared_noise_and_timesteps(x_w, x_l, num_train_timesteps, generator)
    return torch.cat([x_w, x_l]), torch.cat([noise, noise]), torch.cat([t, t])
