"""The pipeline's training stages on every core: each launches its run under torchrun.

A laptop has two cores, and one process of one torch thread uses one of them (two threads in
one process collapse under contention; see DEVELOPERS' notes in docs/scaling.md). Two processes
of one thread each - data parallelism over gloo, the same DDP engine that runs on many GPUs -
train the same model about twice as fast. So a training stage (pretrain, sft, dpo, lora) runs

    python -m torch.distributed.run --standalone --nproc_per_node N \\
        -m reference_impl.pipeline.launch <stage folder>

and every rank executes the stage's ``train_*`` function of ``stages.py``; rank 0 writes its
result to ``train_result.json``, which the pipeline reads back. The rest of the stage
(sampling, measuring) stays in the pipeline's own process, which runs it on N torch threads:
no rank exists then, so their cores are free. Inside a training run, rank 0 also validates on
N threads while the other ranks wait (``parallel.sampling_threads``, distributed/cores.py).

``train.batch_size`` is per process (docs/scaling.md), so each rank trains on 1/N of every
global batch: N processes see the same images and noise as one process, and the stage numbers
agree within float rounding (tests/test_ddp.py, tests/test_dpo_ddp.py). N is
``parallel.pipeline_processes``, by default one per core (per GPU), lowered until every batch
divides; one core, or N = 1, trains in-process as before.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from ..config import Config, ConfigError, load_config, to_dict
from ..distributed.cores import available_cores

RESULT = "train_result.json"
LAUNCH_CONFIG = "launch_config.yaml"


def global_batches(cfg: Config) -> list[int]:
    """Every global batch size a training stage uses (each must split evenly over the ranks)."""
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


def train(p, name: str, out: Path) -> dict:
    """Run stage ``name``'s training (``stages.TRAIN[name]``) on ``num_processes`` ranks;
    returns rank 0's result (a JSON dict)."""
    from .stages import TRAIN

    n = num_processes(p.cfg)
    if n == 1:
        return TRAIN[name](p, out)
    (out / LAUNCH_CONFIG).write_text(yaml.safe_dump(to_dict(per_rank(p.cfg, n)), sort_keys=False))
    (out / RESULT).unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", REFERENCE_IMPL_STAGE=name,
               REFERENCE_IMPL_PROGRESS="1" if p.progress else "0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(n), "-m", "reference_impl.pipeline.launch", str(out)]
    done = subprocess.run(cmd, env=env, check=False)
    if done.returncode != 0 or not (out / RESULT).exists():
        raise RuntimeError(f"stage {name}: the {n}-process training run failed (exit "
                           f"{done.returncode}); its output is above. Rerun to resume from its "
                           f"checkpoints, or set parallel.pipeline_processes=1")
    return json.loads((out / RESULT).read_text())


def worker(out: Path) -> int:
    """One rank of a launched stage: rebuild the pipeline from the per-rank config, train."""
    from . import LIFECYCLE, Pipeline
    from .stages import TRAIN

    name = os.environ["REFERENCE_IMPL_STAGE"]
    cfg = load_config(str(out / LAUNCH_CONFIG))
    rank = int(os.environ.get("RANK", "0"))
    p = Pipeline(cfg, progress=rank == 0 and os.environ.get("REFERENCE_IMPL_PROGRESS") == "1")
    p.current = next(s for s in LIFECYCLE if s.name == name)
    result = TRAIN[name](p, out)
    if rank == 0:
        (out / RESULT).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(worker(Path(sys.argv[1])))
