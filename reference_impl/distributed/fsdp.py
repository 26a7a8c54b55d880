"""Fully Sharded Data Parallel for the trainer: FSDP2 (``torch.distributed.fsdp.fully_shard``).

DDP keeps a whole copy of the model, its gradients and its AdamW state on every rank. FSDP
keeps 1/N of each (ZeRO stage 3, Rajbhandari et al. 2020, arXiv 1910.02054; Zhao et al. 2023,
arXiv 2304.11277) and pays for it in traffic:

  forward   each shard unit all-gathers its parameters, computes, frees them again
            (``reshard_after_forward=True``; ``False`` keeps them until backward = ZeRO-2)
  backward  all-gather again (ZeRO-3 only), compute the gradients, reduce-scatter them: each
            rank receives the summed gradient of its own shard only
  step      AdamW updates the local shard; nobody ever holds the whole optimizer state

Parameters become ``DTensor``s (a local shard plus the layout of the whole), so everything
written against "the model" must say which view it wants. That is what this file is for:
``shard_model`` (which submodules become shard units), ``no_grad_sync`` (gradient
accumulation), ``gather_full`` (a whole, ordinary copy for sampling and export). The EMA is
sharded like the weights: ``ShardedEMA`` in training/ema.py, beside the plain EMA. Checkpoints go through ``distributed/checkpoint.py``.

We call torch's ``fully_shard`` ourselves rather than through accelerate's FSDP plugin: accelerate
(1.15) only switches to FSDP for multi-GPU launches, and then the CPU tests could not run the
trainer's FSDP code at all. The sharding engine is the same one the plugin calls.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.distributed as dist


def shard_units(model: torch.nn.Module, min_params: int) -> list[torch.nn.Module]:
    """Submodules that become their own FSDP unit, innermost first (a size-based policy).

    Walking bottom-up, a module becomes a unit once the parameters below it that no inner unit
    has claimed reach ``min_params`` (torch's ``size_based_auto_wrap_policy``); containers
    without a ``forward`` pass their parameters up to their parent. Only one unit's
    parameters are gathered at a time, so peak memory is about one unit, not the model.
    The root is not listed: ``shard_model`` always shards it last, for the leftovers.
    """
    units: list[torch.nn.Module] = []

    def unclaimed(module: torch.nn.Module) -> int:
        n = sum(p.numel() for p in module.parameters(recurse=False))
        n += sum(unclaimed(child) for child in module.children())
        # containers (ModuleList, ModuleDict) have no forward of their own to hook into
        is_container = isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict))
        if module is not model and not is_container and n >= min_params:
            units.append(module)
            return 0
        return n

    unclaimed(model)
    return units


def shard_model(model: torch.nn.Module, device: torch.device, reshard_after_forward: bool = True,
                min_params: int = 100_000, mixed_precision: str = "no") -> torch.nn.Module:
    """Shard ``model`` in place over all ranks of the default process group; returns it.

    Every rank must pass identical weights (the trainer seeds them): each keeps its slice.
    ``mixed_precision="bf16"`` all-gathers and computes in bf16 but reduce-scatters the
    gradients in fp32, the usual recipe (summing N bf16 gradients loses bits).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("FSDP shards the model over processes: launch with torchrun or "
                           "accelerate launch (2 or more processes), or use parallel.strategy=ddp")
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if mixed_precision == "bf16" else MixedPrecisionPolicy()
    model.to(device)
    for unit in shard_units(model, min_params):
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    return model


def settings_from_accelerate(plugin) -> tuple[bool, int]:
    """(reshard_after_forward, min_params) of an accelerate FSDP plugin (from ``fsdp.yaml``).

    FSDP1 spells the sharding as a strategy name: FULL_SHARD is ZeRO-3, SHARD_GRAD_OP ZeRO-2.
    Options the trainer does not implement are refused rather than silently ignored.
    """
    offload = getattr(plugin, "cpu_offload", None)
    if getattr(offload, "offload_params", False) or type(offload).__name__ == "CPUOffloadPolicy":
        raise ValueError("fsdp_offload_params: true is not supported by the trainer's FSDP; "
                         "set it to false in the accelerate config")
    if getattr(plugin, "activation_checkpointing", False):
        raise ValueError("fsdp_activation_checkpointing: true is not supported by the trainer's "
                         "FSDP; set it to false in the accelerate config")
    reshard = plugin.reshard_after_forward
    if not isinstance(reshard, bool):  # an FSDP1 ShardingStrategy (enum or its name)
        reshard = getattr(reshard, "name", str(reshard)).upper() in ("FULL_SHARD", "HYBRID_SHARD")
    return reshard, int(plugin.min_num_params or 0)


@contextmanager
def no_grad_sync(model: torch.nn.Module, enabled: bool = True):
    """Skip the gradient reduce-scatter inside (non-final micro-batches of an accumulated step).

    The gradients then accumulate unsharded on each rank, so accumulation costs ZeRO-2 memory
    for the gradients until the last micro-batch reduce-scatters the sum once.
    """
    if not enabled:
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def local_numel(model: torch.nn.Module) -> int:
    """Parameter elements this rank actually stores (about 1/N of the model under FSDP)."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel()
               for p in model.parameters())


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: an all-gather for a sharded DTensor (every rank must call this)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def gather_full(template: torch.nn.Module, tensors: dict[str, torch.Tensor],
                device: torch.device) -> torch.nn.Module:
    """An ordinary (unsharded) copy of ``template`` holding ``tensors`` (name -> maybe DTensor).

    ``template`` is the model's skeleton on the meta device (no memory), kept from before
    sharding. A collective: every rank must call it, every rank gets the whole model.
    """
    state = {name: _full(t.detach()) for name, t in tensors.items()}
    model = copy.deepcopy(template).to_empty(device=device)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
