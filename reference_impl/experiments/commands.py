"""``python -m reference_impl experiment NAME [--scale fast|full] [--seeds N] [--force] [--json]``
and ``python -m reference_impl experiment --list``.

Prints the claim, each arm with its 95% interval and n, the verdict and the figures; with
``--json`` the last line is the whole result as one JSON object.
"""
from __future__ import annotations

import json
import sys

from .runner import SCALES, ExperimentError, get, names, run_experiment


def add_arguments(p) -> None:
    p.add_argument("name", nargs="?", help="the experiment (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments, claims, full-scale times")
    p.add_argument("--scale", default="fast", choices=SCALES,
                   help="fast: seconds to a minute (CI, lectures); full: the real figure")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the experiment's)")
    p.add_argument("--force", action="store_true", help="recompute, ignoring the cache")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes, one torch thread each (default: min(2, cores))")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.add_argument("--no-progress", action="store_true")


def list_experiments() -> list[dict]:
    return [{"name": n, "claim": (e := get(n)).claim, "lecture": e.lecture,
             "full_minutes": e.full_minutes, "default_seeds": e.default_seeds} for n in names()]


def describe(res) -> str:
    lines = [f"{res.name} [{res.scale}, seeds {res.seeds}]{' (cached)' if res.cached else ''}",
             f"claim:   {res.claim}", f"rule:    {res.rule}", f"anchor:  {res.anchor}", ""]
    width = max(len(a.name) for a in res.arms)
    for a in res.arms:
        lines.append(f"  {a.name:<{width}}  {a.metric}: {a.text()}  [{a.interval}]")
    if res.gate or res.gate_note:
        lines += ["", "gate:"] + ([f"  none: {res.gate_note}"] if not res.gate else [
            f"  {'met    ' if g['met'] else 'NOT MET'}  {g['what']} {g['op']} {g['threshold']:g}: "
            f"measured {g['value']:.3g}" if g["key"] else f"  NOT MET  {g['what']}"
            for g in res.gate])
    lines += ["", f"headline: {res.headline.metric}: {res.headline.text()}",
              f"verdict:  {res.verdict.upper()} - {res.reason}"]
    lines += [f"  {row.label}: {row.measured.text()} -> {row.verdict.upper()} - {row.reason}"
              for row in res.rows[1:]]
    lines += [(f"wall time: {res.wall_s:.0f} s ({res.units_cached} of {len(res.unit_seconds)} "
               f"runs from the cache; the runs took {sum(res.unit_seconds):.0f} s of worker "
               "time when computed)")]
    lines += [f"figure:   {f}" for f in res.figures]
    return "\n".join(lines)


def main(args) -> int:
    if args.list:
        rows = list_experiments()
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                print(f"{r['name']:<13} ~{r['full_minutes']:>4.0f} min full  "
                      f"(lecture {r['lecture']})  {r['claim']}")
        return 0
    if not args.name:
        print(f"error: name an experiment ({', '.join(names())}) or pass --list", file=sys.stderr)
        return 2
    try:
        res = run_experiment(args.name, args.scale, args.seeds, force=args.force,
                             workers=args.workers, progress=not args.no_progress)
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(describe(res))
    if args.json:
        print(json.dumps(res.to_dict(), default=float))
    return 0
