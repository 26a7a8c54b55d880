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

How many ranks and what each trains on (1/N of every global batch) is
``distributed/launch.py``, the one launcher; one core, or N = 1, trains in-process as before.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import yaml

from ..config import load_config, to_dict
from ..distributed.launch import (  # noqa: F401  (re-exported: the pipeline's names for them)
    LAUNCH_CONFIG,
    global_batches,
    num_processes,
    per_rank,
    sampling_threads,
    torchrun,
)

RESULT = "train_result.json"


def train(p, name: str, out: Path) -> dict:
    """Run stage ``name``'s training (``stages.TRAIN[name]``) on ``num_processes`` ranks;
    returns rank 0's result (a JSON dict)."""
    from .stages import TRAIN

    n = num_processes(p.cfg)
    if n == 1:
        return TRAIN[name](p, out)
    (out / LAUNCH_CONFIG).write_text(yaml.safe_dump(to_dict(per_rank(p.cfg, n)), sort_keys=False))
    (out / RESULT).unlink(missing_ok=True)
    done = torchrun(n, "reference_impl.pipeline.launch", [str(out)],
                    env={"REFERENCE_IMPL_STAGE": name,
                         "REFERENCE_IMPL_PROGRESS": "1" if p.progress else "0"})
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
