"""Checkpoints that survive a crash at any moment.

Writing: everything goes into a temporary folder, then one ``os.replace`` renames it to
``checkpoints/step_0001234``. A rename is atomic on POSIX file systems, so a reader sees the
old set of checkpoints or the new one, never half a checkpoint; a kill during the write leaves
only a ``.tmp-*`` folder that the next run deletes. A ``COMPLETE`` marker, written last inside
the temporary folder, is the second line of defence. Only the newest ``keep`` are kept.

What a checkpoint holds (enough to continue bit for bit on CPU): model, EMA, optimizer, LR
schedule, health monitor, trainer position (stage, step, batches consumed) and every RNG state.

The final model is exported in diffusers format by ``models/exported.py`` (``export_final``,
read back by ``load_final`` / ``load_unet``), where sampling may import it too.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

PREFIX = "step_"


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write ``state`` (name -> picklable object) as checkpoint ``step``; prune old ones."""
    final = checkpoint_path(run_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{PREFIX}{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, obj in state.items():
        torch.save(obj, tmp / f"{name}.pt")
    (tmp / "COMPLETE").write_text(json.dumps({"step": step, "files": sorted(state)}))
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune_checkpoints(run_dir, keep)
    return final


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where checkpoint ``step`` lives (a folder; FSDP runs write distributed ones there)."""
    return Path(run_dir) / "checkpoints" / f"{PREFIX}{step:07d}"


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    done = [p for p in root.glob(f"{PREFIX}*") if (p / "COMPLETE").exists()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def remove_partial(run_dir: str | Path) -> list[Path]:
    """Delete temporary folders left by a crash during a write; returns what was removed."""
    root = Path(run_dir) / "checkpoints"
    stale = list(root.glob(".tmp-*")) if root.exists() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def load_checkpoint(path: str | Path) -> dict:
    """Everything a checkpoint holds, as name -> object."""
    path = Path(path)
    if not (path / "COMPLETE").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no COMPLETE marker)")
    if (path / ".metadata").exists():
        raise ValueError(f"{path} is a distributed (FSDP) checkpoint: load it with "
                         "reference_impl.distributed.checkpoint.load_distributed")
    names = json.loads((path / "COMPLETE").read_text())["files"]
    return {n: torch.load(path / f"{n}.pt", weights_only=False, map_location="cpu") for n in names}
