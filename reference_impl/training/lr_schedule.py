"""The learning-rate schedule of a run: diffusers' schedules, plus warmup-stable-decay.

``linear`` and ``cosine`` decay from the first step after warm-up, so a short run spends most
of its steps below its peak LR. Warmup-stable-decay (WSD; Hu et al. 2024, MiniCPM, arXiv
2404.06395, sec. 4.1; Hägele et al. 2024, arXiv 2405.18392) holds the peak until the last
``decay_fraction`` of the steps, then anneals to zero: the long high-LR phase explores, the
short anneal is where the loss (and, here, prompt accuracy) drops. It is the speedrun's
"short high-LR phase then a fast anneal" (docs/speedrun.md). The WSD schedule is
transformers' ``get_wsd_schedule`` with a linear decay.
"""
from __future__ import annotations

from diffusers.optimization import get_scheduler
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def make_lr_schedule(optimizer: Optimizer, name: str, warmup_steps: int, total_steps: int,
                     decay_fraction: float = 0.2) -> LambdaLR:
    """The schedule ``name`` over ``total_steps`` optimizer steps (``decay_fraction``: WSD only)."""
    if name != "wsd":
        return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps,
                             num_training_steps=total_steps)
    from transformers.optimization import get_wsd_schedule

    decay = max(1, round(decay_fraction * total_steps))
    if warmup_steps + decay > total_steps:
        raise ValueError(f"wsd: warm-up {warmup_steps} + decay {decay} steps exceed the run's "
                         f"{total_steps} steps")
    return get_wsd_schedule(optimizer, num_warmup_steps=warmup_steps, num_decay_steps=decay,
                            num_training_steps=total_steps, decay_type="linear")
