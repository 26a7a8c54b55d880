"""``python -m autograder release|grade|manual`` (see the package docstring)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import batch, release
from .sandbox import Limits, SandboxUnavailable, check_sandbox

REPO = Path(__file__).resolve().parents[1]


def _config_timeout() -> int:
    """The per-cell timeout of nbgrader_config.py: one source of truth for both graders."""
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader(release.CONFIG.name, path=str(release.CONFIG.parent)).load_config()
    return int(cfg.Execute.timeout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m autograder", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("release", help="regenerate assignments/ from solutions/ (nbgrader)")
    r.add_argument("--check", action="store_true", help="only check that assignments/ is fresh")
    r.add_argument("--course", type=Path, default=REPO)
    g = sub.add_parser("grade", help="grade SUBMISSIONS/<student>/<assignment>/<nb>.ipynb")
    g.add_argument("submissions", type=Path)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--course", type=Path, default=REPO)
    g.add_argument("--jobs", type=int, default=1, help="students graded in parallel")
    g.add_argument("--cell-timeout", type=int, default=None, help="seconds (default: nbgrader_config)")
    g.add_argument("--cpu-seconds", type=int, default=Limits.cpu_seconds)
    g.add_argument("--memory-mb", type=int, default=Limits.memory_mb)
    g.add_argument("--wall-seconds", type=int, default=Limits.wall_seconds)
    g.add_argument("--processes", type=int, default=Limits.processes,
                   help="tasks (processes + threads) for one student's whole jail")
    g.add_argument("--address-space-mb", type=int, default=Limits.address_space_mb,
                   help="RLIMIT_AS per process when a cgroup limits the whole jail")
    g.add_argument("--checks-only", action="store_true",
                   help="hidden checks only, no feedback run of the notebook (same scores, "
                        "feedback without outputs)")
    g.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="run student code WITHOUT bubblewrap (trusted code only; noted in the CSV)")
    m = sub.add_parser("manual", help="enter the score of a manually graded cell")
    m.add_argument("out", type=Path)
    m.add_argument("--student", required=True)
    m.add_argument("--assignment", required=True)
    m.add_argument("--cell", required=True, help="grade_id of the manually graded cell")
    m.add_argument("--points", type=float, required=True)
    m.add_argument("--course", type=Path, default=REPO)
    m.add_argument("--override", action="store_true",
                   help="also allow setting an autograded test cell (after reviewing a flag)")
    args = p.parse_args(argv)

    if args.cmd == "release":
        if args.check:
            problems = release.stale(args.course)
            for line in problems:
                print(line)
            print("assignments/ is stale: run `python -m autograder release`" if problems
                  else "assignments/ is up to date")
            return 1 if problems else 0
        release.generate(args.course)
        print(f"released {', '.join(batch.assignments(args.course))} into assignments/")
        return 0
    if args.cmd == "manual":
        try:
            batch.enter_manual(args.out, args.course, args.student, args.assignment, args.cell,
                               args.points, args.override)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{args.student}/{args.assignment}/{args.cell} = {args.points:g}; grades.csv updated")
        return 0
    sandbox = not args.unsafe_no_sandbox
    if sandbox:
        try:
            check_sandbox()
        except SandboxUnavailable as e:
            print(f"error: {e}\nRefusing to run student code unsandboxed. Install bubblewrap, "
                  "or pass --unsafe-no-sandbox for trusted submissions only.", file=sys.stderr)
            return 2
    else:
        print("WARNING: grading WITHOUT a sandbox (--unsafe-no-sandbox)", file=sys.stderr)
    limits = Limits(cpu_seconds=args.cpu_seconds, memory_mb=args.memory_mb,
                    processes=args.processes, address_space_mb=args.address_space_mb,
                    cell_timeout=args.cell_timeout or _config_timeout(),
                    wall_seconds=args.wall_seconds)
    try:
        records = batch.grade(args.submissions, args.out, args.course, limits, sandbox, args.jobs,
                              notebook_run=not args.checks_only)
    except RuntimeError as e:  # the instructor's reference fails its own hidden checks
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"graded {len(records)} submissions -> {args.out / 'grades.csv'}")
    # A student whose grading broke has 0 points and a note in the CSV: never a failed batch.
    return 0

if __name__ == "__main__":
    sys.exit(main())
