"""What the network is trained to predict, and how each sample's loss is weighted.

Targets (x_t = a x_0 + s eps with a = sqrt(abar_t), s = sqrt(1 - abar_t)):
  epsilon       eps                          (Ho et al. 2020, eq. 14)
  v_prediction  v = a eps - s x_0            (Salimans & Ho 2022, arXiv 2202.00512, sec. 4)
  sample        x_0

Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
Strategy", arXiv 2303.09556, eq. 8-10). Written as a weight on the *x0 loss* the ideal weight is
min(SNR, gamma); expressed on the loss of each parameterisation it becomes
  epsilon:       w = min(SNR, gamma) / SNR
  v_prediction:  w = min(SNR, gamma) / (SNR + 1)
  sample:        w = min(SNR, gamma)
It stops the nearly-clean timesteps (huge SNR) from dominating the gradient, so training spends
its effort on the middle noise levels where structure is learned (~3.4x faster convergence).

Noise offset (Guttenberg 2023, "Diffusion with Offset Noise"): eps + s * n, n ~ N(0, 1) per
image and channel, so the model learns to change an image's mean brightness - without it,
samples drift to mid-grey and cannot be very dark or very bright.
"""
from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def training_target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor,
                    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The regression target for x0, noise (B, C, H, W) at timesteps (B,)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        abar = alphas_cumprod.to(x0.device)[timesteps].float().view(-1, 1, 1, 1)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0
    raise ValueError(f"prediction_type={prediction_type!r}; choose one of {PREDICTION_TYPES}")


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights (B,) of min-SNR-gamma for the given parameterisation.

    SNR = 0 (the last step of a zero-terminal-SNR schedule) is guarded: the epsilon weight's
    limit min(SNR, g)/SNR -> 1 as SNR -> 0, so it is set to 1 there instead of 0/0.
    """
    assert gamma > 0, "min-SNR gamma must be positive"
    clipped = torch.clamp(snr, max=gamma)  # min(SNR, gamma)
    if prediction_type == "epsilon":
        return torch.where(snr > 0, clipped / snr.clamp(min=1e-20), torch.ones_like(snr))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"prediction_type={prediction_type!r}; choose one of {PREDICTION_TYPES}")


def sample_noise(shape: tuple, offset: float = 0.0, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Gaussian noise (B, C, H, W), plus ``offset`` * N(0, 1) constant per image and channel."""
    noise = torch.randn(shape, generator=generator, device=device)
    if offset > 0:
        noise = noise + offset * torch.randn(shape[0], shape[1], 1, 1, generator=generator,
                                             device=device)
    return noise


def drop_captions(captions: list[str], p: float, generator: torch.Generator | None = None,
                  rank: int = 0, world_size: int = 1) -> list[str]:
    """Replace each caption by "" with probability p, so one network learns both the
    conditional and the unconditional model that classifier-free guidance needs
    (Ho & Salimans 2022, arXiv 2207.12598, Algorithm 1).

    Under data parallelism ``captions`` is this rank's share of a global batch dealt out
    rank::world_size; the draw covers the whole global batch and keeps this rank's rows, so
    every caption meets the coin it would meet in one process.
    """
    if p <= 0:
        return list(captions)
    keep = (torch.rand(len(captions) * world_size, generator=generator) >= p)[rank::world_size]
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample: (B, C, H, W) x 2 -> (B,), in float32."""
    return (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
