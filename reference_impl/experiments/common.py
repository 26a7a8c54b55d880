"""What every training experiment shares: a config from a preset plus overrides, a training
run measured at chosen steps, and the measurement itself (domain-FID and prompt accuracy).

A run here is the project's own ``Trainer`` (training/trainer.py) - the same loop the lecture
points to - trained in pieces with ``fit(stop_after=k)`` so the experiment can measure the
EMA and the raw weights wherever it likes along the way. ``train_and_measure`` is the one way
an experiment trains: what it records at every step goes through ``fit``'s ``on_step`` hook. Runs live in a scratch folder that is
deleted afterwards: an experiment keeps numbers, not checkpoints.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..config import Config, load_config
from ..evaluation.validation import Validator
from ..paths import cache_dir

_PROBE = None
_VALIDATORS: dict = {}


def make_config(overrides: dict, base: str = "laptop", seed: int = 0, name: str = "experiment",
                output_dir: str | Path | None = None) -> Config:
    """The ``base`` preset with ``overrides`` ({"train.lr": 1e-3, ...}), validated strictly.

    The seed sets the initial weights, the data order and the noise draws (``seed``); the
    world (the scenes) stays the preset's, so seeds differ in training luck, not in data.
    Checkpoints are written rarely: an experiment is short and keeps no checkpoints.
    """
    sets = {"name": name, "seed": seed, "train.checkpoint_every": 10**6,
            "train.keep_checkpoints": 1, "train.validate_every": 0, "train.num_threads": 1,
            "train.log_every": 10}
    sets.update(overrides)
    if output_dir is not None:
        sets["output_dir"] = str(output_dir)
    return load_config(base, [f"{k}={_yaml(v)}" for k, v in sets.items()])


def _yaml(v) -> str:
    import json

    return json.dumps(v) if not isinstance(v, str) else v


def probe():
    """The evaluation probe (trained once and cached on disk, then kept in memory)."""
    global _PROBE
    if _PROBE is None:
        from ..evaluation.probe import get_probe

        _PROBE = get_probe(progress=False)
    return _PROBE


def validator(resolution: int, num_prompts: int, num_reference: int, seed: int = 1234) -> Validator:
    """A validator (fixed prompts, fixed reference statistics), built once per setting."""
    key = (resolution, num_prompts, num_reference, seed)
    if key not in _VALIDATORS:
        _VALIDATORS[key] = Validator(probe(), resolution, num_prompts=num_prompts, seed=seed,
                                     num_reference=num_reference)
    return _VALIDATORS[key]


def measure(trainer, val: Validator, resolution: int, raw: bool = False) -> dict:
    """Domain-FID (probe features) and prompt accuracy of the EMA (or raw) weights."""
    model = trainer.raw_unet if raw else trainer.ema.shadow
    was_training = model.training
    model.eval()
    try:
        out = val.run(trainer.sample_fn(resolution, model), step=trainer.step)
    finally:
        model.train(was_training)
    keep = ("fid", "prompt_acc", "prompt_acc/kind", "prompt_acc/colour", "prompt_acc/background",
            "brightness/mean", "brightness/std")
    return {k: out[k] for k in keep if k in out}


def train_and_measure(cfg: Config, at_steps: Sequence[int],
                      measure_fn: Callable[[object, int], dict] | None = None,
                      keep_dir: bool = False, loss=None, dataset_fn=None, on_step=None,
                      unet=None) -> dict:
    """Train ``cfg`` through its curriculum, calling ``measure_fn(trainer, step)`` at each step
    of ``at_steps`` (and at the end). Returns {"history": per-step log, "measures": [{step,
    ...}], "seconds": training seconds (measurement excluded), "images": images seen}.
    ``loss`` replaces the trainer's default ``DiffusionLoss`` (e.g. a class-reweighted one).
    ``dataset_fn(data_cfg, stage)`` replaces the stage's ShapesWorld (the Trainer's hook): a
    re-captioned or a synthetic training set. ``on_step(trainer, rec)`` is ``Trainer.fit``'s
    step hook: what the experiment records at every step (weight snapshots, each step's
    record). ``unet`` starts from that model instead of the config's freshly built one.
    """
    import time

    from ..training.trainer import Trainer

    scratch = Path(tempfile.mkdtemp(prefix=f"{cfg.name}-", dir=cache_dir("experiments", "_work")))
    cfg.output_dir = str(scratch)
    try:
        trainer = Trainer(cfg, progress=False, unet=unet, loss=loss, dataset_fn=dataset_fn)
        stops = sorted({s for s in at_steps if 0 < s <= trainer.total_steps} | {trainer.total_steps})
        measures, train_s = [], 0.0
        for s in stops:
            t0 = time.perf_counter()
            trainer.fit(stop_after=s - trainer.step, on_step=on_step)
            train_s += time.perf_counter() - t0
            if measure_fn is not None:
                with torch.no_grad():
                    measures.append({"step": trainer.step, **measure_fn(trainer, trainer.step)})
        history = [{k: v for k, v in r.items() if isinstance(v, (int, float, bool)) or v is None}
                   for r in trainer.history]
        images = trainer.step * cfg.train.batch_size * cfg.train.grad_accum
        return {"history": history, "measures": measures, "seconds": train_s, "images": images,
                "trainer": trainer if keep_dir else None}
    finally:
        if not keep_dir:
            shutil.rmtree(scratch, ignore_errors=True)
