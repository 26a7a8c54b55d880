"""The denoiser: diffusers' ``UNet2DConditionModel`` with cross-attention to caption tokens.

The architecture is Stable Diffusion's UNet (Rombach et al. 2022, arXiv 2112.10752) scaled
down: ResNet blocks, self-attention, and cross-attention whose keys/values are the frozen
text encoder's token embeddings (384-dim for all-MiniLM-L6-v2). We work in pixel space - at
16-64 px no VAE is needed - so in/out channels are 3.

Presets (parameter counts printed by ``python -c "from reference_impl.models.unet import *;
print_presets()"``):
  tiny    tests and CI: a few seconds for a handful of steps
  laptop  about 2 M parameters: learns ShapesWorld at 32 px on 2 CPU cores in minutes
  h100    about 200 M parameters: one H100, bf16, 64-128 px
"""
from __future__ import annotations

from diffusers import UNet2DConditionModel

# Note: diffusers' ``attention_head_dim`` argument of this class is, for historical reasons,
# the *number of heads* (diffusers issue #2011); channels / heads is the real head size.
PRESETS = {
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 attention_head_dim=2, norm_num_groups=8),
    "laptop": dict(block_out_channels=(32, 64, 64), layers_per_block=1,
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   attention_head_dim=4, norm_num_groups=16),
    "h100": dict(block_out_channels=(192, 384, 576, 768), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                 "CrossAttnUpBlock2D"),
                 attention_head_dim=12, norm_num_groups=32),
}


def build_unet(preset: str = "laptop", resolution: int = 32, cross_attention_dim: int = 384,
               **overrides) -> UNet2DConditionModel:
    """A freshly initialised UNet from a preset; ``overrides`` replace preset fields."""
    if preset not in PRESETS:
        raise ValueError(f"model preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = {**PRESETS[preset], **overrides}
    return UNet2DConditionModel(sample_size=resolution, in_channels=3, out_channels=3,
                                cross_attention_dim=cross_attention_dim, **cfg)


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def print_presets() -> None:
    for name in PRESETS:
        print(f"{name:>7}: {count_parameters(build_unet(name)) / 1e6:.1f} M parameters")
