"""The cores a process may use, and lending idle ones to the one process still working.

On a CPU machine each training rank runs one torch thread on its own core (two threads in one
process collapse when anything else wants a core; docs/scaling.md). But some work runs on one
process while the others only wait:

* rank 0 samples and measures its validation while the other ranks block in the next
  all-reduce (a blocking wait uses no CPU), or after they have finished;
* the pipeline's own process samples and measures between its multi-process training runs,
  while no rank exists at all.

There the waiting ranks' cores are idle, and intra-op threads can use them: ``threads(n)``.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch


def available_cores() -> int:
    """The cores this process may run on (its affinity, where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextmanager
def threads(n: int):
    """Run the block with exactly ``n`` torch threads (capped at the available cores), then
    restore the count. ``n = 0``: the count is left as it is."""
    saved = torch.get_num_threads()
    n = min(n, available_cores())
    if n > 0 and n != saved:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)
