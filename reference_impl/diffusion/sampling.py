"""Sampling with classifier-free guidance on diffusers' DDIM / DPM-Solver schedulers.

Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598, eq. 6), in noise-prediction
form:  e = e_uncond + w (e_cond - e_uncond);  w = 1 is the plain conditional model, w > 1
trades diversity for prompt following. Guidance rescale (Lin et al. 2024, arXiv 2305.08891,
eq. 15-16) pulls the guided prediction's standard deviation back to the conditional one's, which
fixes the over-exposure large w causes.

Samplers: DDIM (Song et al. 2021, arXiv 2010.02502) and DPM-Solver++ (Lu et al. 2022,
arXiv 2211.01095), both built from the training schedule's config so betas and prediction type
always match what the model was trained with.
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float,
                             rescale: float = 0.0) -> torch.Tensor:
    """Guided prediction from unconditional and conditional predictions (B, C, H, W)."""
    if scale == 1.0:
        return cond  # exactly the conditional model (no round-off from u + (c - u))
    guided = uncond + scale * (cond - uncond)
    if rescale > 0:
        dims = list(range(1, cond.ndim))
        std_cond = cond.std(dim=dims, keepdim=True)
        std_guided = guided.std(dim=dims, keepdim=True)
        guided = rescale * guided * (std_cond / std_guided) + (1 - rescale) * guided
    return guided


SPACINGS = ("leading", "trailing", "linspace")


def sampler_spacing(train_scheduler, timestep_spacing: str | None = None) -> str:
    """Which inference timesteps to visit: ``timestep_spacing``, else the one the training
    schedule was built with (``schedule.make_scheduler`` stores it in the scheduler's config).

    "leading" (diffusers' DDIM default) visits t = 0, T/n, ..., so a 4-step DDIM starts at
    t = 750, where the cosine schedule's abar = 0.14: the sampler feeds pure noise to a model
    that expects 38% of the image still in it. "trailing" and "linspace" start at t = T - 1
    (Lin et al. 2024, arXiv 2305.08891, sec. 3.3 and Table 2).
    """
    spacing = timestep_spacing or train_scheduler.config.get("timestep_spacing", "leading")
    if spacing not in SPACINGS:
        raise ValueError(f"timestep_spacing={spacing!r}; choose one of {SPACINGS}")
    if spacing == "leading" and train_scheduler.config.get("rescale_betas_zero_snr", False):
        raise ValueError("zero terminal SNR needs timestep_spacing 'trailing' or 'linspace': "
                         "'leading' never visits t = T, the one step trained on pure noise "
                         "(Lin et al. 2024, sec. 3.3)")
    return spacing


def make_sampler(train_scheduler, sampler: str = "ddim", steps: int = 25,
                 timestep_spacing: str | None = None):
    """An inference scheduler sharing the training schedule's betas and prediction type, with
    the timesteps of ``sampler_spacing``."""
    config = dict(train_scheduler.config)
    zsnr = bool(config.get("rescale_betas_zero_snr", False))
    spacing = sampler_spacing(train_scheduler, timestep_spacing)
    if sampler == "dpm" and timestep_spacing is None and not zsnr:
        spacing = "linspace"  # DPM-Solver's own default, as before; pass one to override it
    if sampler == "ddim":
        s = DDIMScheduler.from_config(config, timestep_spacing=spacing, set_alpha_to_one=False)
    elif sampler == "dpm":
        s = DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing=spacing,
            final_sigmas_type="zero" if zsnr else "sigma_min")
    else:
        raise ValueError(f"sampler={sampler!r}; choose 'ddim' or 'dpm'")
    s.set_timesteps(steps)
    return s


@torch.no_grad()
def sample(unet, text_encoder, prompts: list[str], resolution: int, train_scheduler,
           sampler: str = "ddim", steps: int = 25, guidance_scale: float = 3.0,
           guidance_rescale: float = 0.0, seed: int = 0, batch_size: int = 64,
           timestep_spacing: str | None = None) -> torch.Tensor:
    """Generate one image per prompt: (B, 3, resolution, resolution) in [-1, 1].

    The starting noise of prompt i depends only on ``seed`` and i's batch, so calling this
    twice with the same arguments gives the same images (a fixed validation set).
    ``timestep_spacing`` overrides the training schedule's (see ``sampler_spacing``).
    """
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    was_training = unet.training
    unet.eval()
    out = []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        b = len(chunk)
        sched = make_sampler(train_scheduler, sampler, steps, timestep_spacing)
        x = torch.randn(b, 3, resolution, resolution, generator=gen) * sched.init_noise_sigma
        x = x.to(device)
        cond, cmask = text_encoder.encode(chunk)
        uncond, umask = text_encoder.encode([""] * b)
        guided = guidance_scale != 1.0
        emb = torch.cat([uncond, cond]) if guided else cond
        mask = torch.cat([umask, cmask]) if guided else cmask
        emb, mask = emb.to(device, dtype), mask.to(device)
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]) if guided else x, t)
            pred = unet(inp.to(dtype), t, emb, encoder_attention_mask=mask).sample.float()
            if guided:
                p_uncond, p_cond = pred.chunk(2)
                pred = classifier_free_guidance(p_uncond, p_cond, guidance_scale, guidance_rescale)
            x = sched.step(pred, t, x).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    unet.train(was_training)
    return torch.cat(out)


def sample_with_config(unet, text_encoder, train_scheduler, diffusion, prompts: list[str],
                       resolution: int, seed: int = 0, **overrides) -> torch.Tensor:
    """``sample`` with a config's sampling settings (``diffusion``: a ``DiffusionConfig``):
    its sampler, steps, guidance scale and rescale, each overridable by keyword. The one
    place the config is unpacked, so the trainer, the pipeline and the CLI all draw alike.
    Returns (B, 3, resolution, resolution) in [-1, 1]."""
    kw = {"sampler": diffusion.sampler, "steps": diffusion.sample_steps,
          "guidance_scale": diffusion.guidance_scale,
          "guidance_rescale": diffusion.guidance_rescale}
    kw.update(overrides)
    return sample(unet, text_encoder, prompts, resolution, train_scheduler, seed=seed, **kw)


def sample_checkpoint(checkpoint_dir, prompts: list[str], seed: int = 0, ema: bool = True,
                      resolution: int | None = None, **overrides) -> torch.Tensor:
    """Sample from an exported final/ folder (see ``models/exported.py``) at ``resolution``,
    by default the one the model was last trained at (its ``sample_size``)."""
    from ..models.exported import load_final

    unet, cfg, scheduler, text = load_final(checkpoint_dir, ema=ema)
    return sample_with_config(unet, text, scheduler, cfg.diffusion, prompts,
                              resolution or unet.config.sample_size, seed=seed, **overrides)
