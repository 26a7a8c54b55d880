"""Helpers for the tests that launch several processes (gloo on CPU).

``launch`` runs a test file as a ``torchrun`` worker script; ``count_micro_batches`` makes a
trainer report which micro-batch of a step is running, for tests that check when gradients
are synchronised.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def launch(script: str | Path, out: Path, nproc: int = 2, timeout: int = 300,
           env: dict[str, str] | None = None) -> None:
    """``torchrun --standalone --nproc_per_node N script out``; fails the test on error or hang.

    ACCELERATE_USE_CPU is removed: the trainer must join the gloo group by itself. ``env`` adds
    variables for the ranks.
    """
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), str(script), str(out)]
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun hung: {e.stdout}\n{e.stderr}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def count_micro_batches(trainer) -> dict:
    """Wrap ``trainer`` so that ``state["n"]`` is the running micro-batch (1-based) of the
    current step, and None outside ``train_step`` (e.g. the FLOP count's backward)."""
    state = {"n": None}
    loss_fn, step_fn = trainer.micro_batch_loss, trainer.train_step

    def counted_loss(*a, **k):
        if state["n"] is not None:
            state["n"] += 1
        return loss_fn(*a, **k)

    def counted_step(stream):
        state["n"] = 0
        try:
            return step_fn(stream)
        finally:
            state["n"] = None
    trainer.micro_batch_loss, trainer.train_step = counted_loss, counted_step
    return state
