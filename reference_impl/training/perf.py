"""GPU speed knobs (config section ``perf``).

Each knob is a known trade of exactness or start-up time for throughput; each is a no-op on
the CPU, so the ``ci`` and ``laptop`` presets train exactly as before:

  tf32           fp32 matmuls/convolutions on TF32 tensor cores (10-bit mantissa, Ampere+)
  channels_last  NHWC layout: cuDNN's fastest convolutions on tensor cores want it
  fused_adamw    ``torch.optim.AdamW(fused=True)``: one kernel for the whole update (CUDA only)
  sdpa           ``F.scaled_dot_product_attention`` (FlashAttention, Dao et al. 2022,
                 arXiv 2205.14135): diffusers' ``AttnProcessor2_0``, its default; ``false``
                 selects the classic processor that materialises the (L x L) attention matrix
  compile        ``torch.compile`` of the UNet, in place, so the state dict keeps its names
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def on_cuda(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


def set_backend_flags(perf, device: torch.device) -> None:
    """Global TF32 switches (they would have no effect on the CPU: we do not touch them)."""
    if on_cuda(device) and perf.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def prepare_model(model: torch.nn.Module, perf, device: torch.device,
                  compile: bool = True) -> torch.nn.Module:
    """Attention processor, memory layout and compilation of the UNet (before accelerate wraps it).

    ``compile=False`` leaves compilation to the caller: FSDP shards first, then compiles, so the
    compiled graph sees the sharded parameters' all-gathers (see ``compile_model``).
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if hasattr(model, "set_attn_processor"):
        model.set_attn_processor(AttnProcessor2_0() if perf.sdpa else AttnProcessor())
    if on_cuda(device) and perf.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return compile_model(model, perf, device) if compile else model


def compile_model(model: torch.nn.Module, perf, device: torch.device) -> torch.nn.Module:
    if on_cuda(device) and perf.compile:
        model.compile()  # nn.Module.compile: same module, same parameter names
    return model


def to_layout(x: torch.Tensor, perf, device: torch.device) -> torch.Tensor:
    """An image batch (B, C, H, W) in the layout the model was put in."""
    if on_cuda(device) and perf.channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def make_optimizer(params, lr: float, weight_decay: float, perf, device: torch.device):
    """AdamW (Loshchilov & Hutter 2019, arXiv 1711.05101); the fused kernel only on CUDA."""
    fused = bool(perf.fused_adamw and on_cuda(device))
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                             **({"fused": True} if fused else {}))


@contextmanager
def flush_denormals(device: torch.device):
    """On the CPU, treat subnormal floats (|x| < 1.2e-38 in fp32) as zero while training.

    x86 cores compute on subnormals through a microcode assist, tens of times slower than on
    normal floats. A saturated loss makes them: in Diffusion-DPO a pair whose implicit reward
    margin is large has gradient weight sigmoid(-margin), below 1e-38 once the margin passes
    ~87, and that tiny weight flows back through the whole UNet: in make train's DPO stage
    (beta 12500, 2 ranks) such steps ran at ~4 instead of ~22 img/s.
    Flushing to zero (the FTZ/DAZ bits, ``torch.set_flush_denormal``) changes only values
    below 1.2e-38, though that can move the rounding of a later sum. Measured there: the stage
    took 141 s instead of 262 s; seed 1 came out bitwise equal (weights and all 120 losses),
    seed 0's losses moved by ~2e-5 relative from step 3 and one of its 96 judged prompts
    became a tie. Pre-training and SFT were bitwise equal. It is a per-thread
    setting: it covers the training thread, which on the CPU is the thread that computes.
    """
    on = torch.device(device).type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if on:
            torch.set_flush_denormal(False)  # torch's default
