"""Planted submissions of assignment 3 (All-Reduce), with their honest autograded points.

Like ``plants.py`` for the EMA assignment: each plausible wrong answer changes the reference
solution in one place and must lose exactly the points of the tests its functions fail when
called on the hidden inputs. The hanging ring (a rank that never sends) must be stopped by the
timeout and cost only Part B, never stop the batch.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

from .. import notebook as nbu
from . import reference_plants, trust_plants
from .plants import Plant, replace, solved_from

REPO = Path(__file__).resolve().parents[2]
NAME = "allreduce"
SOURCE = REPO / "solutions" / NAME / f"{NAME}.ipynb"
RELEASE = REPO / "assignments" / NAME / f"{NAME}.ipynb"
POINTS = {"test_chunk_bounds": 1, "test_ring_sums": 3, "test_ring_bytes_sent": 2,
          "test_ring_on_processes": 3, "test_ring_cost": 2, "test_tree_cost": 2}
AUTO_MAX = float(sum(POINTS.values()))


def solved():
    return solved_from(SOURCE, RELEASE)


def blank():
    return nbu.read(RELEASE)


def plant(make, failed=(), why=""):
    failed = set(failed)

    def build(folder: Path):
        (folder / NAME).mkdir(parents=True, exist_ok=True)
        nbformat.write(make(), str(folder / NAME / f"{NAME}.ipynb"))
    return Plant(build, AUTO_MAX - sum(POINTS[t] for t in failed), failed, why)


SIM_PHASES = '(("reduce-scatter", 0), ("all-gather", 1))'
PLANTS = {
    "solution": plant(solved),
    "blank": plant(blank, POINTS),
    # the all-gather starts from chunk r - s, not r + 1 - s: rank r sends a chunk it has not
    # finished, so the sums are wrong, and so are the bytes when the chunks differ in size
    "off_by_one_chunk": plant(lambda: replace(solved(), "ring_impl", SIM_PHASES,
                                              '(("reduce-scatter", 0), ("all-gather", 0))'),
                              {"test_ring_sums", "test_ring_bytes_sent"}),
    # the same mistake in the process version only
    "off_by_one_on_processes": plant(lambda: replace(solved(), "dist_impl", "for offset in (0, 1):",
                                                     "for offset in (0, 0):"),
                                     {"test_ring_on_processes"}),
    # reduce-scatter alone: each rank holds one finished chunk, and sent half the bytes
    "reduce_scatter_only": plant(lambda: replace(solved(), "ring_impl", SIM_PHASES,
                                                 '(("reduce-scatter", 0),)'),
                                 {"test_ring_sums", "test_ring_bytes_sent"}),
    # chunks of numel // N: the last numel % N elements are never reduced or counted
    "remainder_dropped": plant(lambda: replace(solved(), "ring_impl",
                                               "end = start + base + (1 if i < extra else 0)",
                                               "end = start + base"),
                               {"test_chunk_bounds", "test_ring_sums", "test_ring_bytes_sent"}),
    # rank 1 never sends: its neighbour waits forever; the timeout must stop it
    "hangs_in_collective": plant(lambda: replace(solved(), "dist_impl", "if out.numel():",
                                                 "if out.numel() and rank != 1:"),
                                 {"test_ring_on_processes"},
                                 why="rank 1 never sends: the ring hangs until the timeout"),
}

PLANTS.update(reference_plants.allreduce())  # borrowed code, a rule, a measurement (issue 25)


PLANTS.update({s: Plant(**p) for s, p in trust_plants.ALLREDUCE.items()})  # issue 25 (d)


def write(dest: Path) -> None:
    """dest/<student>/allreduce/allreduce.ipynb for every plant."""
    for student, p in PLANTS.items():
        (dest / student).mkdir(parents=True, exist_ok=True)
        p.build(dest / student)
