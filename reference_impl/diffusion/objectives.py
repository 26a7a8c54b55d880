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

The one noising path of training (``ForwardProcess``, the forward process q(x_t | x_0) of Ho et
al. 2020, eq. 4) and the loss built on it (``DiffusionLoss``) live here too; the Diffusion-DPO
loss (alignment/dpo.py) uses the same path. A loss is an object the trainer is given:
``loss(unet, batch, forward) -> (scalar loss, stats)``.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .schedule import snr

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


def sample_timesteps(n: int, num_train_timesteps: int, generator: torch.Generator | None = None,
                     logit_normal_std: float = 0.0, logit_normal_mean: float = 0.0) -> torch.Tensor:
    """n training timesteps (long, in [0, T)): uniform, or logit-normal when ``logit_normal_std``
    > 0: u ~ N(mean, std), t = floor(sigmoid(u) * T) (Esser et al. 2024, "Scaling Rectified
    Flow Transformers", arXiv 2403.03206, sec. 3.1, eq. 19). Logit-normal spends the steps on
    the middle noise levels, where layout, shape and colour are decided, and few on the nearly
    clean and the nearly pure-noise ends."""
    if logit_normal_std <= 0:
        return torch.randint(0, num_train_timesteps, (n,), generator=generator)
    u = torch.randn(n, generator=generator) * logit_normal_std + logit_normal_mean
    return (torch.sigmoid(u) * num_train_timesteps).long().clamp(max=num_train_timesteps - 1)


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


@dataclass
class NoisyBatch:
    """A training batch after the forward process, on the training device."""
    x_t: torch.Tensor     # (N, C, H, W) noised images, in the model's memory layout
    t: torch.Tensor       # (N,) long timesteps
    target: torch.Tensor  # (N, C, H, W) what the model must predict (``training_target``)
    hidden: torch.Tensor  # (N, L, D) caption embeddings (after caption dropout)
    mask: torch.Tensor    # (N, L) their attention mask


class ForwardProcess:
    """The one noising path of training: caption dropout, noise (+ offset), timesteps, and
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, arXiv 2006.11239, eq. 4).

    Data parallelism that does not change the numbers: every rank draws the randomness of the
    *global* batch (world x B rows) from the same generator and keeps rows rank::world.
    DistributedSampler deals each global batch out the same way (rank r holds positions
    r, r + world, ...), so every image meets the noise, timestep and caption dropout it would
    meet in one process with batch world x B, and the all-reduced mean gradient is that
    process's gradient up to float rounding. With one process the slice is everything.

    ``generator`` is shared with the trainer (its state is checkpointed); ``layout`` puts x_t in
    the model's memory format; ``autocast`` is the mixed-precision context of the forward pass.
    """

    def __init__(self, scheduler, cfg, text_encoder, generator: torch.Generator,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 layout=lambda x: x, autocast=nullcontext):
        self.scheduler, self.cfg, self.text, self.gen = scheduler, cfg, text_encoder, generator
        self.rank, self.world, self.device = rank, world_size, device
        self.layout, self.autocast = layout, autocast

    def __call__(self, x0: torch.Tensor, captions: list[str], repeat: int = 1) -> NoisyBatch:
        """Noise ``x0`` (repeat x B, C, H, W) captioned by ``captions`` (B strings).

        ``repeat`` > 1: rows i, B + i, 2B + i, ... are images of the same caption and share one
        draw of noise and timestep (Diffusion-DPO compares winner and loser under one draw).
        """
        d = self.cfg
        x0 = x0.to(self.device)
        b = len(captions)
        assert x0.shape[0] == repeat * b, f"{x0.shape[0]} images for {repeat} x {b} captions"
        gb = b * self.world
        captions = drop_captions(captions, d.caption_dropout, self.gen, self.rank, self.world)
        hidden, mask = self.text.encode(list(captions) * repeat)
        shape = (gb, *x0.shape[1:])
        noise = sample_noise(shape, d.noise_offset, self.gen)[self.rank::self.world]
        t = sample_timesteps(gb, d.num_train_timesteps, self.gen, d.logit_normal_std,
                             d.logit_normal_mean)[self.rank::self.world]
        if repeat > 1:
            noise, t = noise.repeat(repeat, 1, 1, 1), t.repeat(repeat)
        noise, t = noise.to(self.device), t.to(self.device)
        x_t = self.layout(self.scheduler.add_noise(x0, noise, t))
        target = training_target(d.prediction_type, x0, noise, self.scheduler.alphas_cumprod, t)
        return NoisyBatch(x_t, t, target, hidden.to(self.device), mask.to(self.device))

    def predict(self, unet, x: NoisyBatch) -> torch.Tensor:
        """The model's prediction (N, C, H, W) for a noisy batch, in mixed precision if set."""
        with self.autocast():
            return unet(x.x_t, x.t, x.hidden, encoder_attention_mask=x.mask).sample


class DiffusionLoss:
    """The denoising loss of pre-training, SFT and LoRA: E_t w(t) ||target - model(x_t, t)||^2
    (Ho et al. 2020, eq. 14), with min-SNR-gamma weights w(t) when ``min_snr_gamma`` > 0.

    Returns (scalar loss, stats); stats ``t`` and ``mse`` (B,) feed the per-timestep loss curve.
    """

    def __init__(self, prediction_type: str = "epsilon", min_snr_gamma: float = 0.0):
        self.prediction_type, self.gamma = prediction_type, min_snr_gamma

    def __call__(self, unet, batch: dict, forward: ForwardProcess):
        x = forward(batch["image"], batch["caption"])
        mse = per_sample_mse(forward.predict(unet, x), x.target)
        if self.gamma > 0:
            w = min_snr_weights(snr(forward.scheduler.alphas_cumprod, x.t), self.gamma,
                                self.prediction_type)
        else:
            w = torch.ones_like(mse)
        return (w * mse).mean(), {"t": x.t.detach().cpu(), "mse": mse.detach().cpu()}
