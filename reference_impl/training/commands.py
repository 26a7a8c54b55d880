"""``python -m reference_impl train --config NAME_OR_PATH [--set k=v ...] [--resume]``.

On a CPU machine with several cores the command launches itself on every one of them
(``distributed/launch.py``: torchrun, one thread per rank, the config's batch as the global
batch), as ``make train``'s pre-training stage does; ``--processes 1`` trains in this process.
On GPUs launch it with torchrun or accelerate (docs/scaling.md): there the batch is per GPU.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from ..config import load_config, to_dict
from ..distributed import launch
from .health import TrainingDiverged


def add_arguments(p) -> None:
    p.add_argument("--config", default="laptop", help="preset name (ci, laptop, ...) or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="stop after this many steps (the schedule still spans the whole run)")
    p.add_argument("--no-validation", action="store_true", help="skip the probe-based validation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--processes", type=int, default=None,
                   help="ranks to train on (default: parallel.pipeline_processes, 0 = one per "
                        "core or GPU); 1 trains in this process")


def build_validator(cfg):
    """The evaluation toolkit's validation hook at the run's final resolution."""
    from ..evaluation.probe import get_probe
    from ..evaluation.validation import Validator

    probe = get_probe(progress=True)
    return Validator(probe, resolution=cfg.train.curriculum[-1].resolution,
                     num_prompts=cfg.eval.num_prompts, seed=cfg.eval.seed,
                     num_reference=cfg.eval.reference_images)


def relaunch(cfg, args, n: int) -> int:
    """Run this command again on n ranks (torchrun), each with 1/n of every batch."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / launch.LAUNCH_CONFIG).write_text(yaml.safe_dump(to_dict(launch.per_rank(cfg, n)),
                                                    sort_keys=False))
    flags = [f for f, on in (("--resume", args.resume), ("--no-validation", args.no_validation),
                             ("--no-progress", args.no_progress)) if on]
    if args.stop_after_steps is not None:
        flags += ["--stop-after-steps", str(args.stop_after_steps)]
    batches = [s.batch_size or cfg.train.batch_size for s in cfg.train.curriculum]
    print(f"{cfg.name}: training on {n} processes of one thread (global batch per stage "
          f"{batches}, 1/{n} of it per rank)", flush=True)
    done = launch.torchrun(n, "reference_impl", ["train", "--config", str(out / launch.LAUNCH_CONFIG),
                                                 "--processes", "1", *flags])
    return done.returncode


def main(args) -> int:
    cfg = load_config(args.config, args.overrides)  # config errors stop here, before any work
    if args.processes is not None:
        if args.processes < 1:
            print(f"--processes must be at least 1, got {args.processes}", file=sys.stderr)
            return 2
        cfg.parallel.pipeline_processes = args.processes
    n = launch.self_launch_processes(cfg)
    if n > 1:
        return relaunch(cfg, args, n)
    from .trainer import Trainer

    validator = None if args.no_validation else build_validator(cfg)
    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress, validator=validator)
    if trainer.is_main:
        print(f"{cfg.name}: {trainer.n_params / 1e6:.2f} M trainable parameters, "
              f"{trainer.total_steps} steps, output in {cfg.output_dir}")
    try:
        trainer.fit(stop_after=args.stop_after_steps)
    except TrainingDiverged as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 3
    if trainer.is_main and trainer.step >= trainer.total_steps:
        summarize(trainer)
    return 0


def summarize(trainer) -> None:
    """Figures of the run (loss, grad norm, LR, FID) and the final validation numbers."""
    from ..evaluation.report import plot_run

    figures = plot_run(trainer.run_dir)
    final = [r for r in trainer.history if r.get("final")]
    print(f"figures: {', '.join(str(f) for f in figures)}")
    if final:
        r = final[-1]
        keys = [k for k in r if k.startswith(("val/", "val_raw/")) and isinstance(r[k], float)]
        width = max(len(k) for k in keys) if keys else 0
        print("final validation (domain-FID on probe features; prompt accuracy read back by the probe):")
        for k in sorted(keys):
            print(f"  {k:<{width}}  {r[k]:.4f}")
