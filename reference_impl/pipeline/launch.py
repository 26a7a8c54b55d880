"""The pipeline's training stages on every core: each launches its run under torchrun.

A laptop has two cores, and one process of one torch thread uses one of them (two threads in
one process collapse under contention; see DEVELOPERS' notes in docs/scaling.md). Two processes
of one thread each - data parallelism over gloo, the same DDP engine that runs on many GPUs -
train the same model about twice as fast. So a training stage (pretrain, sft, dpo, lora) runs

    python -m torch.distributed.run --standalone --nproc_per_node N \\
        -m reference_impl.pipeline.rank <stage folder>

and every rank executes the stage's ``train_*`` function of ``stages.py`` (``rank.py``); rank 0
writes its result to ``train_result.json``, which the pipeline reads back. This file knows
nothing of the stages: a stage hands ``train_on_every_core`` its own training function. The
rest of the stage (sampling, measuring) stays in the pipeline's own process, which runs it on N
torch threads: no rank exists then, so their cores are free. Inside a training run, rank 0 also
validates on N threads while the other ranks wait (``parallel.sampling_threads``,
distributed/cores.py).

How many ranks and what each trains on (1/N of every global batch) is
``distributed/launch.py``, the one launcher; one core, or N = 1, trains in-process as before.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..config import to_dict
from ..distributed.launch import (  # noqa: F401  (re-exported: the pipeline's names for them)
    LAUNCH_CONFIG,
    global_batches,
    num_processes,
    per_rank,
    sampling_threads,
    torchrun,
)

RESULT = "train_result.json"
RANK_MODULE = "reference_impl.pipeline.rank"  # what every launched rank runs


def train_on_every_core(p, name: str, out: Path, fn) -> dict:
    """Run stage ``name``'s training ``fn(p, out)`` on ``num_processes`` ranks; returns rank 0's
    result (a JSON dict). One process runs ``fn`` here; more run ``RANK_MODULE``, whose ranks
    call the same function, ``stages.TRAIN[name]``."""
    n = num_processes(p.cfg)
    if n == 1:
        return fn(p, out)
    (out / LAUNCH_CONFIG).write_text(yaml.safe_dump(to_dict(per_rank(p.cfg, n)), sort_keys=False))
    (out / RESULT).unlink(missing_ok=True)
    done = torchrun(n, RANK_MODULE, [str(out)],
                    env={"REFERENCE_IMPL_STAGE": name,
                         "REFERENCE_IMPL_PROGRESS": "1" if p.progress else "0"})
    if done.returncode != 0 or not (out / RESULT).exists():
        raise RuntimeError(f"stage {name}: the {n}-process training run failed (exit "
                           f"{done.returncode}); its output is above. Rerun to resume from its "
                           f"checkpoints, or set parallel.pipeline_processes=1")
    return json.loads((out / RESULT).read_text())
