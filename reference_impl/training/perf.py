"""GPU speed knobs (config section ``perf``) and the data-parallel strategy (``parallel``).

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

import torch


def on_cuda(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


def set_backend_flags(perf, device: torch.device) -> None:
    """Global TF32 switches (they would have no effect on the CPU: we do not touch them)."""
    if on_cuda(device) and perf.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def prepare_model(model: torch.nn.Module, perf, device: torch.device) -> torch.nn.Module:
    """Attention processor, memory layout and compilation of the UNet (before accelerate wraps it)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if hasattr(model, "set_attn_processor"):
        model.set_attn_processor(AttnProcessor2_0() if perf.sdpa else AttnProcessor())
    if on_cuda(device) and perf.channels_last:
        model = model.to(memory_format=torch.channels_last)
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


def fsdp_plugin(parallel):
    """accelerate's FSDP2 plugin for ``parallel.strategy == "fsdp"``, else None.

    full_shard = ZeRO-3 (parameters re-sharded after forward), shard_grad_op = ZeRO-2 (the
    gathered parameters stay until backward). Submodules above ``fsdp_min_params`` parameters
    become their own shard units, so only one unit is gathered at a time.
    """
    if parallel.strategy != "fsdp":
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=parallel.fsdp_sharding == "full_shard",
        auto_wrap_policy="size_based_wrap", min_num_params=parallel.fsdp_min_params,
        state_dict_type="SHARDED_STATE_DICT")
