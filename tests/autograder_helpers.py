"""Helpers shared by the autograder's test files: is a sandbox here, grade a batch, check scores.

(Added for assignment 2's tests; tests/test_autograder_redteam.py has its own copies of the
first three, which it may switch to.)
"""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from autograder.sandbox import SandboxUnavailable, check_sandbox

REPO = Path(__file__).resolve().parents[1]


def sandbox_problem() -> str | None:
    """Why bubblewrap cannot run here, or None."""
    try:
        check_sandbox()
    except SandboxUnavailable as e:
        return str(e)
    return None


def needs_sandbox():
    """A skip mark for tests that grade through the real sandbox."""
    problem = sandbox_problem()
    return pytest.mark.skipif(problem is not None, reason=f"bubblewrap cannot run here: {problem}")


def grade(course: Path, subs: Path, out: Path, *extra: str) -> dict[tuple[str, str], dict]:
    """``python -m autograder grade subs --out out --course course --jobs 2 ...``; asserts exit 0
    and returns the CSV rows by (student, assignment)."""
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", str(subs), "--out", str(out),
                           "--course", str(course), "--jobs", "2", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "grades.csv", newline="") as f:
        return {(r["student"], r["assignment"]): r for r in csv.DictReader(f)}


def test_points(row: dict) -> dict[str, float]:
    """{test grade_id: points} of one CSV row (the autograded columns; empty cells skipped)."""
    return {k: float(v) for k, v in row.items() if k.startswith("test_") and v not in ("", None)}


def score_problems(rows: dict, assignment: str, table: dict) -> list:
    """[(student, got, expected, notes)] for every plant whose total or failing tests are off.
    ``table``: {student: plant with .points and .failed}."""
    wrong = []
    for student, plant in table.items():
        row = rows[(student, assignment)]
        got = test_points(row)
        if sum(got.values()) != plant.points:
            wrong.append((student, sum(got.values()), plant.points, row["notes"][:300]))
        elif {k for k, v in got.items() if v == 0} != set(plant.failed):
            wrong.append((student, "failed", sorted(k for k, v in got.items() if v == 0)))
    return wrong
