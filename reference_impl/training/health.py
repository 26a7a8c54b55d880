"""Training health: the scorecard a person watches while a run is alive.

- EMA of the loss and of its spread: a loss far above its running mean (a z-score above
  ``spike_z``) is a spike, often the first sign of divergence.
- Gradient norm (before clipping): too high is unstable, too low is not learning.
- NaN / inf guard: a non-finite loss or gradient skips the optimizer step (the weights stay
  as they were) and is logged; ``max_bad_steps`` in a row abort the run with a clear message,
  and the last good checkpoint stays on disk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row: the run stops, its last checkpoint is intact."""


@dataclass
class HealthMonitor:
    beta: float = 0.98  # EMA factor of the loss statistics
    spike_z: float = 4.0
    max_bad_steps: int = 5
    warmup: int = 20  # steps before spike detection starts (statistics must settle)
    loss_ema: float | None = None
    loss_var: float = 0.0
    grad_norm_ema: float | None = None
    bad_in_a_row: int = 0
    bad_total: int = 0
    spikes: int = 0
    seen: int = 0

    def check(self, loss: float, grad_norm: float | None) -> dict:
        """Record one step. Returns dict(ok, spike, loss_ema, loss_std, grad_norm_ema).

        ok=False means: skip this optimizer step. Raises TrainingDiverged after
        ``max_bad_steps`` non-finite steps in a row.
        """
        finite = math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))
        if not finite:
            self.bad_in_a_row += 1
            self.bad_total += 1
            if self.bad_in_a_row >= self.max_bad_steps:
                raise TrainingDiverged(
                    f"{self.bad_in_a_row} non-finite losses/gradients in a row (loss={loss}, "
                    f"grad_norm={grad_norm}); stopping. The last good checkpoint is kept. "
                    "Try a lower learning rate, a longer warm-up or a smaller max_grad_norm.")
            return self._report(ok=False, spike=False)
        self.bad_in_a_row = 0
        self.seen += 1
        spike = False
        if self.loss_ema is None:
            self.loss_ema = loss
        else:
            std = math.sqrt(self.loss_var)
            spike = self.seen > self.warmup and std > 0 and (loss - self.loss_ema) / std > self.spike_z
            delta = loss - self.loss_ema
            self.loss_ema += (1 - self.beta) * delta
            self.loss_var = self.beta * (self.loss_var + (1 - self.beta) * delta * delta)
        self.spikes += int(spike)
        if grad_norm is not None:
            self.grad_norm_ema = grad_norm if self.grad_norm_ema is None else (
                self.beta * self.grad_norm_ema + (1 - self.beta) * grad_norm)
        return self._report(ok=True, spike=spike)

    def _report(self, ok: bool, spike: bool) -> dict:
        return dict(ok=ok, spike=spike, loss_ema=self.loss_ema, loss_std=math.sqrt(self.loss_var),
                    grad_norm_ema=self.grad_norm_ema, bad_total=self.bad_total)

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
