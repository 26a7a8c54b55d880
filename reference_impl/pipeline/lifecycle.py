"""The lifecycle's stages, in order, and what each reads and writes.

Only data: the orchestration (``__init__.py``), the stages themselves (``stages.py``) and a
launched training rank (``rank.py``) all read it, so it sits below each of them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """A stage's contract: ``reads`` are ``"stage/file"`` paths of earlier stages (besides
    their metrics.json, which any later stage may read); ``writes`` are paths in its folder."""

    name: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


LIFECYCLE = (
    Stage("web", writes=("examples.png", "examples.txt")),
    Stage("caption", writes=("captions.json",)),
    Stage("safety", reads=("caption/captions.json",), writes=("kept.json",)),
    Stage("pretrain", reads=("caption/captions.json", "safety/kept.json"), writes=("final",)),
    Stage("curate", reads=("caption/captions.json", "safety/kept.json"),
          writes=("sft_positions.json",)),
    Stage("sft", reads=("pretrain/final", "caption/captions.json", "curate/sft_positions.json"),
          writes=("final", "before.png", "after.png")),
    Stage("pairs", reads=("sft/final",), writes=("pairs",)),
    Stage("dpo", reads=("sft/final", "pairs/pairs"), writes=("final",)),
    Stage("lora", reads=("dpo/final",), writes=("adapter",)),
    Stage("safety_check", reads=("dpo/final",)),
    Stage("export", reads=("dpo/final", "lora/adapter")),
    Stage("report"),
)
STAGES = tuple(s.name for s in LIFECYCLE)
