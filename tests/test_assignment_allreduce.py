"""Assignment 3 (All-Reduce): the hidden checks, the honesty of the grades, a hanging ring.

One ``--checks-only`` batch grades the planted submissions of
``autograder/redteam/allreduce_plants.py`` in the bubblewrap sandbox: the solution earns full
marks, the blank release 0, each plausible wrong answer loses exactly the points of the tests
its functions fail, and a ring in which one rank never sends is stopped by the timeout (Part B
only) while the batch goes on. Part B runs real gloo processes inside the jail: the sandbox's
network namespace has its own loopback, which is enough for 127.0.0.1. Scores use the same
helpers as the EMA red-team suite (tests/test_autograder_redteam.py).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_autograder_redteam import SANDBOX_PROBLEM, _check_scores, _grade

from autograder import checks
from autograder import notebook as nbu
from autograder.redteam import allreduce_plants as plants
from autograder.redteam import reference_plants, trust_plants
from reference_impl.distributed import allreduce as ref
from reference_impl.distributed import cost_model

REPO = Path(__file__).resolve().parents[1]
sandboxed = pytest.mark.skipif(SANDBOX_PROBLEM is not None,
                               reason=f"bubblewrap cannot run here: {SANDBOX_PROBLEM}")


def test_points_and_cells_match_the_source():
    src = nbu.read(plants.SOURCE)
    tests = {nbu.grade_id(c): c.metadata["nbgrader"]["points"] for c in src.cells if nbu.is_test(c)}
    assert tests == plants.POINTS
    spec = checks.spec(src)
    assert all(spec[t] for t in tests), "a test without hidden checks"
    # the hidden sizes include fewer elements than ranks and sizes N does not divide
    sums = spec["test_ring_sums"]
    assert any(len(c["args"][0][0]) < len(c["args"][0]) for c in sums)
    assert any(len(c["args"][0][0]) % len(c["args"][0]) for c in sums)


def test_hidden_expected_values_agree_with_reference_impl():
    """The grader's own arithmetic (hidden regions) equals distributed/allreduce.py and
    distributed/cost_model.py, the oracles the lecture tests against dist.all_reduce."""
    spec = checks.spec(nbu.read(plants.SOURCE))
    for c in spec["test_ring_bytes_sent"]:
        if c["call"] == "ring_bytes":
            numel, n, rank = c["args"]
            es = c["kwargs"].get("element_size", 4)
            assert c["want"] == ref.ring_bytes_sent(numel, es, n, rank), c
    for c in spec["test_chunk_bounds"]:
        sizes = [hi - lo for lo, hi in c["want"]]
        assert sizes == ref.chunk_sizes(*c["args"]), c
    for c in spec["test_ring_cost"]:
        fn = cost_model.ring_time if c["call"] == "ring_time" else cost_model.crossover_bytes
        assert c["want"] == pytest.approx(fn(*c["args"]), rel=1e-12), c
    for c in spec["test_tree_cost"]:
        assert c["want"] == pytest.approx(cost_model.tree_time(*c["args"]), rel=1e-12, abs=1e-18)


def test_the_rule_is_checked_by_the_values():
    """Part B's hidden sums on N >= 3 ranks are float32 values only the ring's order of
    additions produces: not the exact sum (a float64 detour), not rank order (gather and add)."""
    import numpy as np

    spec = checks.spec(nbu.read(plants.SOURCE))["test_ring_on_processes"]
    strict = [c for c in spec if len(c["args"][0]) >= 3 and
              max(abs(x) for row in c["args"][0] for x in row) >= 2 ** 25]
    assert len(strict) >= 3
    for c in strict:
        vals = np.array(c["args"][0], dtype=np.float32)
        want = c["want"][0][0]
        assert want != vals.astype(np.float64).sum(0).tolist()
        in_rank_order = vals[0].copy()
        for row in vals[1:]:
            in_rank_order = (in_rank_order + row).astype(np.float32)
        assert want != in_rank_order.tolist()
        sums, _ = ref.simulate_ring_all_reduce([torch.tensor(v) for v in c["args"][0]])[::2]
        assert all(s.tolist() == want for s in sums)


@sandboxed
def test_planted_submissions_get_their_honest_scores(tmp_path):
    course = tmp_path / "course"
    for d in ("solutions", "assignments"):
        shutil.copytree(REPO / d / plants.NAME, course / d / plants.NAME)
    plants.write(course / "subs" / "allreduce")
    out, rows = _grade(course, "allreduce", "--checks-only")
    _check_scores(rows, plants.PLANTS)
    assert not trust_plants.problems(rows, out)  # the course's helpers redefined: flagged
    assert float(rows["solution"]["total"]) == plants.AUTO_MAX
    assert float(rows["blank"]["total"]) == 0.0
    # the hanging ring timed out (a note, not a crash) and the rest of its notebook was graded
    hang = rows["hangs_in_collective"]
    assert float(hang["total"]) == plants.AUTO_MAX - plants.POINTS["test_ring_on_processes"]
    page = (out / "feedback" / "hangs_in_collective" / "allreduce.html").read_text()
    assert "run_ring_on_processes timed out" in page or "raised" in page
    # borrowed code and the broken rule: flagged where the scan can see them
    for student in set(plants.PLANTS) & set(reference_plants.FLAGS):
        for flag in reference_plants.FLAGS[student]:
            assert flag in rows[student]["flags"], (student, rows[student]["flags"])
        if not reference_plants.FLAGS[student]:
            assert not any(k in rows[student]["flags"] for k in reference_plants.BORROWED)
    records = {r["student"]: r for r in json.loads((out / "results.json").read_text())}
    for student, test in reference_plants.NOT_WRITTEN.items():
        if student in plants.PLANTS:
            msg = records[student]["graded"][0]["results"][test]["message"]
            assert "did not write" in msg and "checks passed" in msg, (student, msg)
    # all_reduce hidden from the scan still loses Part B: the sums are not the ring's
    msg = records["hidden_all_reduce"]["graded"][0]["results"]["test_ring_on_processes"]["message"]
    assert "returned a wrong value" in msg, msg
