"""One launcher for every multi-process run: N ranks of one thread each under torchrun.

A laptop has two cores, and one process of one torch thread uses one of them (two threads in
one process collapse under contention; docs/scaling.md). Two processes of one thread each -
data parallelism over gloo, the same DDP engine that runs on many GPUs - train the same model
about 1.7x as fast. So ``python -m reference_impl train``, the pipeline's training stages and the
scaling experiments' gloo worlds (experiments/zero.py, data_parallel.py, allreduce.py) all run

    python -m torch.distributed.run --standalone --nproc_per_node N -m MODULE ARGS...

``train.batch_size`` is per process (docs/scaling.md); a run launched from here keeps the
config's batch as the *global* batch: ``per_rank`` divides every batch size by N, so N
processes see the same images and noise as one process, and the numbers agree within float
rounding (tests/test_ddp.py). N is ``parallel.pipeline_processes``, by default one per core
(per GPU), lowered until every batch divides.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch

from ..config import Config, ConfigError
from .cores import available_cores


def global_batches(cfg: Config) -> list[int]:
    """Every global batch size a training run of ``cfg`` uses (each must split over the ranks)."""
    t = cfg.train
    return [s.batch_size or t.batch_size for s in t.curriculum] + [
        cfg.sft.batch_size, min(cfg.dpo.batch_size, cfg.dpo.num_pairs),
        min(cfg.lora.batch_size, cfg.lora.num_images)]


def num_processes(cfg: Config) -> int:
    """``parallel.pipeline_processes``, or (0) one per core / GPU, lowered until every global
    batch divides by it."""
    asked = cfg.parallel.pipeline_processes
    n = asked or torch.cuda.device_count() or available_cores()
    if asked and any(b % n for b in global_batches(cfg)):
        raise ConfigError(f"parallel.pipeline_processes={n} does not divide the batch sizes "
                          f"{global_batches(cfg)}: each rank trains on an equal share")
    while n > 1 and any(b % n for b in global_batches(cfg)):
        n -= 1
    return n


def sampling_threads(cfg: Config, n: int | None = None) -> int:
    """Threads for sampling while the ranks wait: ``parallel.sampling_threads``, or (0) one per
    process."""
    return cfg.parallel.sampling_threads or (num_processes(cfg) if n is None else n)


def per_rank(cfg: Config, n: int) -> Config:
    """The config each of n ranks runs: every batch size divided by n (the global batch and
    everything else unchanged); rank 0 validates on n threads while the others wait."""
    t = cfg.train
    train = dataclasses.replace(
        t, batch_size=t.batch_size // n,
        curriculum=[dataclasses.replace(s, batch_size=(s.batch_size or t.batch_size) // n)
                    for s in t.curriculum])
    return dataclasses.replace(
        cfg, train=train,
        sft=dataclasses.replace(cfg.sft, batch_size=cfg.sft.batch_size // n),
        dpo=dataclasses.replace(cfg.dpo, batch_size=min(cfg.dpo.batch_size, cfg.dpo.num_pairs) // n),
        lora=dataclasses.replace(cfg.lora, batch_size=min(cfg.lora.batch_size,
                                                          cfg.lora.num_images) // n),
        parallel=dataclasses.replace(cfg.parallel, sampling_threads=sampling_threads(cfg, n)))


LAUNCH_CONFIG = "launch_config.yaml"  # the per-rank config a launched run reads


def is_launched() -> bool:
    """True inside a rank that torchrun (or accelerate launch) started."""
    return "WORLD_SIZE" in os.environ


def self_launch_processes(cfg: Config) -> int:
    """How many ranks ``train`` starts by itself: one per CPU core (``num_processes``); 1 inside
    a launched rank, or on GPUs, where presets keep their per-GPU batch under torchrun."""
    return 1 if is_launched() or torch.cuda.is_available() else num_processes(cfg)


def torchrun(n: int, module: str, args: list[str], env: dict[str, str] | None = None,
             capture: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` on n local ranks of one thread each; wait for them.

    ``env`` adds variables; ``capture`` keeps the ranks' output (else it goes to ours);
    ``timeout`` (seconds) raises ``subprocess.TimeoutExpired`` on a hung world. The ranks import
    this checkout's ``reference_impl`` whatever the working directory (a lecture's notebook).
    """
    full = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join([root, *filter(None, [full.get("PYTHONPATH")])])
    full.update(OMP_NUM_THREADS="1", PYTHONPATH=path, **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(n), "-m", module, *args]
    return subprocess.run(cmd, env=full, check=False, capture_output=capture, text=capture,
                          timeout=timeout)
