"""One rank of a training stage that ``launch.py`` started on several processes:

    python -m torch.distributed.run --standalone --nproc_per_node N \\
        -m reference_impl.pipeline.rank <stage folder>

Each rank rebuilds the pipeline from the per-rank config that ``launch.train_on_every_core``
wrote into the stage folder and runs the stage's training function, ``stages.TRAIN[name]``;
rank 0 writes its result to ``train_result.json`` for the pipeline's process to read. Nothing
imports this file, so it may import the whole pipeline: it is where the import chain starts.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from ..config import load_config
from . import Pipeline
from .launch import LAUNCH_CONFIG, RESULT
from .lifecycle import LIFECYCLE
from .stages import TRAIN


def main(out: Path) -> int:
    """Train stage ``$REFERENCE_IMPL_STAGE`` in ``out`` as this rank."""
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
    sys.exit(main(Path(sys.argv[1])))
