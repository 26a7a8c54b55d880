"""Noise schedules and the signal-to-noise ratio.

The forward process (Ho et al. 2020, DDPM, arXiv 2006.11239, eq. 4):
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   eps ~ N(0, I)
so SNR(t) = abar_t / (1 - abar_t) (Kingma et al. 2021, VDM, arXiv 2107.00630, eq. 1).
The schedule's bookkeeping (betas, alphas_cumprod) is diffusers' ``DDPMScheduler``; we only
choose its shape:
  linear           DDPM's betas 1e-4 .. 0.02
  scaled_linear    Stable Diffusion's (linear in sqrt(beta))
  squaredcos_cap_v2  the cosine schedule of Nichol & Dhariwal 2021 (arXiv 2102.09672, eq. 17)
and optionally rescale it to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise
Schedules and Sample Steps are Flawed", arXiv 2305.08891, Algorithm 1): with SNR(T) > 0 the
model never sees pure noise in training but starts from it at sampling, so it cannot make
very dark or very bright images.
"""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")  # which timesteps a sampler visits (sampling.py)
DEFAULT_SPACING = "leading"


def make_scheduler(beta_schedule: str = "squaredcos_cap_v2", num_train_timesteps: int = 1000,
                   prediction_type: str = "epsilon", zero_terminal_snr: bool = False,
                   timestep_spacing: str | None = None) -> DDPMScheduler:
    """The training noise schedule (a diffusers ``DDPMScheduler``).

    ``timestep_spacing`` does not change training; it is stored in the scheduler's config (and
    so in every exported checkpoint) for the samplers built from it. None: DEFAULT_SPACING, or
    "trailing" under zero terminal SNR, which must start sampling at t = T.
    """
    if beta_schedule not in SCHEDULES:
        raise ValueError(f"beta_schedule={beta_schedule!r}; choose one of {SCHEDULES}")
    if timestep_spacing is None:
        timestep_spacing = "trailing" if zero_terminal_snr else DEFAULT_SPACING
    if timestep_spacing not in SPACINGS:
        raise ValueError(f"timestep_spacing={timestep_spacing!r}; choose one of {SPACINGS}")
    kwargs = {}
    if beta_schedule == "scaled_linear":
        kwargs.update(beta_start=0.00085, beta_end=0.012)
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type=prediction_type, rescale_betas_zero_snr=zero_terminal_snr,
                         clip_sample=False, timestep_spacing=timestep_spacing, **kwargs)


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = abar_t / (1 - abar_t) for integer timesteps (B,) -> (B,) float32.

    With a zero-terminal-SNR schedule SNR(T) = 0 exactly; callers that divide by SNR must
    guard that (see ``objectives.min_snr_weights``).
    """
    abar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return abar / (1.0 - abar)
