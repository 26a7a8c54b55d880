"""Distributed checkpoints: every rank writes its own shard, any world size reads them back.

With FSDP / ZeRO-3 no rank holds the whole model, so "rank 0 calls torch.save" cannot work:
rank 0 only has its shard. ``torch.distributed.checkpoint`` (DCP) writes one file per rank plus
a ``.metadata`` file that records which slice of which tensor lives where. Loading is
planned against the *reader's* sharding, so a checkpoint written by 2 ranks loads on 1 rank,
or on 8 (resharding) - the same property that lets a big run move to a different cluster.

``get_state_dict`` / ``set_state_dict`` (``torch.distributed.checkpoint.state_dict``) give
model and optimizer state keyed by parameter name (FQN) for a plain module, DDP or FSDP
alike, so the files do not depend on how the model was wrapped.

Atomic like ``training/checkpoint.py``: all ranks write into ``.tmp-<name>``; after a barrier
rank 0 writes the ``COMPLETE`` marker and renames the folder; a crash leaves only a temp folder.

References: PyTorch "Getting Started with Distributed Checkpoint (DCP)" tutorial; Zhao et al.
2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel", arXiv 2304.11277.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

MARKER = "COMPLETE"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_distributed(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     extra: dict | None = None, sharded: dict[str, dict] | None = None) -> Path:
    """Write model + optimizer (sharded or not) to the folder ``path``; every rank calls this.

    ``extra``: small replicated state (step, RNG, ...) that rank 0 saves with ``torch.save``.
    ``sharded``: more name -> tensor dicts saved like the weights (e.g. a sharded EMA).
    """
    final = Path(path)
    tmp = final.parent / f".tmp-{final.name}"
    if _rank() == 0:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()  # nobody writes before the stale temp folder is gone
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd, **(sharded or {})}, checkpoint_id=str(tmp))
    _barrier()  # every shard is on disk
    if _rank() == 0:
        if extra is not None:
            torch.save(extra, tmp / "extra.pt")
        (tmp / MARKER).write_text(json.dumps({"world_size": dist.get_world_size()
                                              if dist.is_initialized() else 1}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic: the checkpoint appears whole or not at all
    _barrier()
    return final


def is_distributed_checkpoint(path: str | Path) -> bool:
    """True for a folder written by ``save_distributed`` (DCP keeps its plan in ``.metadata``)."""
    return (Path(path) / ".metadata").exists()


def load_distributed(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     sharded: dict[str, dict] | None = None) -> dict | None:
    """Load model + optimizer in place from ``path`` (any world size); returns ``extra``.

    ``sharded``: the dicts given to ``save_distributed``, in the reader's layout: filled in place.
    """
    path = Path(path)
    if not (path / MARKER).exists():
        raise FileNotFoundError(f"{path} is not a complete distributed checkpoint (no {MARKER})")
    model_sd, optim_sd = get_state_dict(model, optimizer)  # the reader's layout and shards
    state = {"model": model_sd, "optim": optim_sd, **(sharded or {})}
    dcp.load(state, checkpoint_id=str(path))  # fills the tensors in place, resharding as needed
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    extra = path / "extra.pt"
    return torch.load(extra, weights_only=False) if extra.exists() else None
