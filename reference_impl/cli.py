"""Command line: ``python -m reference_impl <command> ...``.

Each command lives in the module named below, which provides ``add_arguments(parser)`` and
``main(args) -> int``. Modules are imported only when their command runs, so ``--help`` is
fast and one stage's heavy imports never slow another.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .config import ConfigError

COMMANDS = {
    "train": ("reference_impl.training.commands", "pre-train (or fine-tune) a diffusion model"),
    "sample": ("reference_impl.diffusion.commands", "sample images from a checkpoint"),
    "evaluate": ("reference_impl.evaluation.commands", "measure a checkpoint or a set of images"),
    "report": ("reference_impl.evaluation.report", "turn a run's metrics into figures"),
    "pipeline": ("reference_impl.pipeline", "run the whole lifecycle, stage by stage"),
    "bench": ("reference_impl.bench", "throughput benchmarks (data, train)"),
    "experiment": ("reference_impl.experiments.commands", "run one claim's experiment (--list)"),
    "results": ("reference_impl.experiments.results_page", "every experiment -> docs/results.md"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reference_impl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module:  # a real missing dependency, not a stage still to come
                raise
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(_missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", False):
        print(f"error: the '{args.command}' command is not part of this version yet",
              file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
