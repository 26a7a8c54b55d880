"""Exponential moving average (EMA) of the weights, with warm-up.

    theta_ema <- d_k * theta_ema + (1 - d_k) * theta          after optimizer step k

Sampling from theta_ema instead of the last raw weights averages out the noise SGD adds
around a minimum (Polyak & Juditsky 1992; used by DDPM, Ho et al. 2020, and every diffusion
model since; assignment 1 derives the variance reduction). The decay warms up so the first
steps, far from any minimum, are quickly forgotten (the schedule of diffusers' ``EMAModel``):
  without warm-up: d_k = (1 + k) / (10 + k)
  with warm-up:    d_k = 1 - (1 + k / inv_gamma) ** -power   (Karras et al. style; power 2/3
                   reaches 0.999 at ~31.6k steps, power 3/4 reaches 0.9999 at ~215k steps)
then clipped to [min_decay, decay], where k counts steps after ``update_after_step``.

Where EMA happens, all of it: ``EMA`` (one whole shadow copy) and ``ShardedEMA`` (under FSDP,
each rank averages its own shard) here; the trainer calls ``update`` after each optimizer step
(training/trainer.py, ``train_step``), samples and exports from the shadow (``whole_models``).
"""
from __future__ import annotations

import copy

import torch


class EMA:
    """Shadow copy of a model's parameters (buffers are copied, not averaged)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, min_decay: float = 0.0,
                 update_after_step: int = 0, use_warmup: bool = True, inv_gamma: float = 1.0,
                 power: float = 2 / 3):
        self._set_schedule(decay, min_decay, update_after_step, use_warmup, inv_gamma, power)
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def _set_schedule(self, decay: float = 0.999, min_decay: float = 0.0,
                      update_after_step: int = 0, use_warmup: bool = True, inv_gamma: float = 1.0,
                      power: float = 2 / 3) -> None:
        assert 0.0 <= min_decay <= decay < 1.0, "need 0 <= min_decay <= decay < 1"
        self.decay, self.min_decay, self.update_after_step = decay, min_decay, update_after_step
        self.use_warmup, self.inv_gamma, self.power = use_warmup, inv_gamma, power
        self.optimization_step = 0

    def get_decay(self, optimization_step: int) -> float:
        """The decay used at (1-based) optimisation step ``optimization_step``."""
        k = max(0, optimization_step - self.update_after_step - 1)
        if k <= 0:
            return 0.0  # the first update copies the weights
        if self.use_warmup:
            d = 1 - (1 + k / self.inv_gamma) ** -self.power
        else:
            d = (1 + k) / (10 + k)
        return max(min(d, self.decay), self.min_decay)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> float:
        """Fold the current weights in; returns the decay used."""
        self.optimization_step += 1
        d = self.get_decay(self.optimization_step)
        for ema_t, t, averaged in self._pairs(model):
            if averaged:
                ema_t.lerp_(t.detach().to(ema_t.dtype), 1.0 - d)  # ema + (1-d)(p - ema)
            else:  # frozen parameters and buffers are copied
                ema_t.copy_(t.detach())
        return d

    def _pairs(self, model: torch.nn.Module):
        """(EMA tensor, model tensor, averaged?) for every parameter and buffer."""
        for ema_p, p in zip(self.shadow.parameters(), model.parameters()):
            yield ema_p, p, p.requires_grad
        for ema_b, b in zip(self.shadow.buffers(), model.buffers()):
            yield ema_b, b, False

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "optimization_step": self.optimization_step}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.optimization_step = int(state["optimization_step"])


class ShardedEMA(EMA):
    """The EMA of an FSDP model, sharded like it: each rank averages only its own slice.

    FSDP modules refuse ``deepcopy``, and a whole shadow copy on every rank would give back the
    memory FSDP saved. The update ``ema <- d ema + (1 - d) theta`` is elementwise, so averaging
    shard by shard is exactly the EMA of the whole. ``full(template)`` gathers it for sampling.
    """

    def __init__(self, model: torch.nn.Module, **schedule):
        self._set_schedule(**schedule)
        with torch.no_grad():
            self.tensors = {n: t.detach().clone() for n, t in model.state_dict().items()}

    def _pairs(self, model: torch.nn.Module):
        """EMA.update's loop, by name: this rank's EMA shard and the model's shard."""
        for name, p in model.named_parameters():
            yield self.tensors[name], p, p.requires_grad
        for name, b in model.named_buffers():
            if name in self.tensors:  # non-persistent buffers are not in the state dict
                yield self.tensors[name], b, False

    def full(self, template: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The whole EMA model (a collective: every rank calls it)."""
        from ..distributed.fsdp import gather_full

        return gather_full(template, self.tensors, device)

    def state_dict(self) -> dict:
        # the tensors stay DTensors: distributed/checkpoint.py saves each rank's shard
        return {"shadow": self.tensors, "optimization_step": self.optimization_step}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, t in state["shadow"].items():
                self.tensors[name].copy_(t)
        self.optimization_step = int(state["optimization_step"])
