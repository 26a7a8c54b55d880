"""nbgrader cell metadata, and the text transformations the grader needs.

Cell kinds follow nbgrader's (``nbgrader.utils``): a *test* cell is graded, not a solution,
code; a *manual* cell is a graded markdown solution; *solution* cells hold the student's work;
everything else with nbgrader metadata (locked read-only cells, tasks) belongs to the source.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

HIDDEN = re.compile(r"^[ \t]*#*[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*#*[ \t]*### END HIDDEN TESTS[^\n]*\n?",
                    re.DOTALL | re.MULTILINE)
SOLUTION = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[^\n]*\n?", re.MULTILINE)


def meta(cell) -> dict:
    m = cell.get("metadata", {}).get("nbgrader", {})
    return m if isinstance(m, dict) else {}


def grade_id(cell) -> str | None:
    return meta(cell).get("grade_id")


def is_solution(cell) -> bool:
    return bool(meta(cell).get("solution"))


def is_test(cell) -> bool:
    m = meta(cell)
    return cell.cell_type == "code" and bool(m.get("grade")) and not m.get("solution")


def is_manual(cell) -> bool:
    m = meta(cell)
    return bool(m.get("grade")) and cell.cell_type == "markdown" or bool(m.get("task"))


def is_autograded_answer(cell) -> bool:
    m = meta(cell)
    return cell.cell_type == "code" and bool(m.get("grade")) and bool(m.get("solution"))


def points(cell) -> float:
    return float(meta(cell).get("points", 0) or 0)


def strip_hidden(source: str) -> str:
    """The test as the release shows it: ``### BEGIN/END HIDDEN TESTS`` regions removed."""
    return HIDDEN.sub("", source)


def hidden_lines(source: str) -> list[str]:
    """The stripped lines inside the hidden-test regions of ``source``."""
    out = []
    for block in HIDDEN.finditer(source):
        out += [ln.strip() for ln in block.group(0).splitlines()[1:-1] if ln.strip()]
    return out


def solution_text(source: str) -> str:
    """The reference solution: the source cell with the delimiter lines removed."""
    return SOLUTION.sub("", source)


def read(path: Path):
    return nbformat.read(str(path), as_version=4)


def graded_cells(nb) -> list:
    """The source's cells that carry points, in notebook order."""
    return [c for c in nb.cells if is_test(c) or is_manual(c) or is_autograded_answer(c)]
