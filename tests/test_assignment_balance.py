"""Assignment 2 (solutions/balance): its hidden checks against the oracles, and its honesty.

* The hidden expected weights (written out on the trusted side) equal reference_impl's
  ``balanced_weights`` (Cui et al. 2019 for the effective number) on every hidden label set.
* The solution's sampler makes exactly reference_impl's seeded global draw (the same epoch
  seed), and its shards, in rank order, are that draw padded cyclically: disjoint and complete.
* The hidden cases separate the plants: overlapping shards show only under uneven sizes,
  a missing reseed only after epoch 0.
* Through the real grader and its sandbox: the solution scores full marks, the blank release 0,
  and each planted mistake (autograder/redteam/balance_plants.py) loses exactly its points.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from autograder_helpers import grade, needs_sandbox, score_problems

from autograder import checks
from autograder import notebook as nbu
from autograder.redteam import balance_plants as plants
from autograder.redteam import reference_plants
from reference_impl.data.balance import DistributedWeightedSampler, balanced_weights

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from balance_tolerance import solution_namespace


@pytest.fixture(scope="module")
def spec():
    return checks.spec(nbu.read(plants.SOURCE))


@pytest.fixture(scope="module")
def ns():
    return solution_namespace()


def test_every_test_has_hidden_cases_and_two_points(spec):
    src = nbu.read(plants.SOURCE)
    tests = {nbu.grade_id(c): c for c in src.cells if nbu.is_test(c)}
    assert set(tests) == set(plants.WEIGHTS + plants.SAMPLER + plants.PART_C)
    for gid, cell in tests.items():
        assert spec[gid], gid
        assert cell.metadata["nbgrader"]["points"] == plants.POINTS


@pytest.mark.parametrize("gid", plants.WEIGHTS)
def test_hidden_weights_are_reference_impl_s(spec, gid):
    for case in spec[gid]:
        labels, method = case["args"]
        kw = case["kwargs"]
        _, want = balanced_weights(labels, method, beta=kw.get("beta", 0.999),
                                   temperature=kw.get("temperature", 2.0))
        got = torch.tensor(case["want"]["tensor"], dtype=torch.float64)
        assert case["want"]["shape"] == [len(labels)]
        assert torch.allclose(got, want, rtol=1e-9, atol=0), (gid, method, kw)
        assert math.isclose(float(got.sum()), 1.0, rel_tol=1e-12)


@pytest.mark.parametrize("n,world,seed,epoch", [(12, 1, 0, 0), (12, 3, 0, 2), (10, 4, 1, 0),
                                                (3, 4, 2, 5), (101, 3, 21, 1)])
def test_solution_shards_are_reference_impl_s_one_draw(ns, n, world, seed, epoch):
    w = (torch.rand(17, generator=torch.Generator().manual_seed(seed)) + 0.05).tolist()
    ref = DistributedWeightedSampler(w, n, rank=0, world_size=1, seed=seed)
    ref.set_epoch(epoch)
    draw = ref.global_sequence().tolist()
    shards = ns["epoch_shards"](w, n, world, seed, [epoch])[0]
    per_rank = math.ceil(n / world)
    assert [len(s) for s in shards] == [per_rank] * world
    assert [i for s in shards for i in s] == (draw * world)[:per_rank * world]


def test_hidden_cases_separate_the_plants(spec):
    even = [c["args"] for c in spec["test_sampler_even"]]
    uneven = [c["args"] for c in spec["test_sampler_uneven"]]
    epochs = [c["args"] for c in spec["test_sampler_epochs"]]
    assert all(num % world == 0 and e == [0] for _, num, world, _, e in even)
    assert all(num % world and e == [0] for _, num, world, _, e in uneven)
    assert {w for _, _, w, _, _ in even + uneven} == {1, 2, 3, 4}
    assert all(num % world == 0 and any(x > 0 for x in e) for _, num, world, _, e in epochs)
    assert any(num < world for _, num, world, _, _ in uneven)


def test_empirical_targets_and_margins(spec):
    for gid, balanced, target in (("test_rare_share_unbalanced", False, 0.1),
                                  ("test_rare_share_balanced", True, 0.5)):
        cases = spec[gid]
        assert len(cases) >= 2 and all(c["args"][0] is balanced for c in cases)
        assert all(c["want"] == target and 0 < c["atol"] < 0.2 for c in cases)
        # the grader measures: the weights come back, the share is taken on the trusted side
        assert all(c["call"] == "trained_weights" and c["measure"]["name"] == "_rare_share"
                   for c in cases)
    # the two targets stay apart by more than both margins: an unbalanced model cannot pass
    assert spec["test_rare_share_unbalanced"][0]["atol"] + spec["test_rare_share_balanced"][0]["atol"] < 0.4


def test_the_grader_measures_a_trained_model(ns):
    """Part C's measurement (the hidden _rare_share): a trained model's share, the same as the
    notebook's own sampler gives; -1 for an untrained model (whose share, ~0.5, would pass the
    balanced check) and for weights of the wrong shape."""
    case = checks.spec(nbu.read(plants.SOURCE))["test_rare_share_balanced"][0]

    def measure(params):
        return checks.measured(case, {"return": [{"tensor": p.tolist(), "shape": list(p.shape)}
                                                 for p in params]})["return"]
    torch.manual_seed(0)
    untrained = list(ns["Denoiser"]().parameters())
    assert measure(untrained) == -1.0
    assert measure(untrained[:-1]) == -1.0
    weights = ns["trained_weights"](True, 5)
    share = measure(weights)
    model = ns["Denoiser"]()
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights):
            p.copy_(w)
    z = ns["ddpm_sample"](model, 4000, torch.Generator().manual_seed(7207))
    assert abs(share - float((z[:, 0] > 0).float().mean())) < 0.01
    assert abs(share - 0.5) < case["atol"]


@needs_sandbox()
def test_plants_get_exactly_their_scores(tmp_path):
    course = tmp_path / "course"  # this assignment only: the batch runs its reference alone
    for d in ("solutions", "assignments"):
        shutil.copytree(REPO / d / "balance", course / d / "balance")
    plants.write(course / "subs")
    rows = grade(course, course / "subs", course / "out", "--checks-only", "--cell-timeout", "60",
                 "--memory-mb", "2048")
    assert set(rows) == {(s, "balance") for s in plants.PLANTS}
    assert not score_problems(rows, "balance", plants.PLANTS)
    assert rows[("solution", "balance")]["written_answer"] == "needs manual grade"
    # borrowed code: flagged, and where it runs and is right, the part's tests taken with a reason
    for student in set(plants.PLANTS) & set(reference_plants.FLAGS):
        flags = rows[(student, "balance")]["flags"]
        for flag in reference_plants.FLAGS[student]:
            assert flag in flags, (student, flags)
        if not reference_plants.FLAGS[student]:
            assert not any(k in flags for k in reference_plants.BORROWED), (student, flags)
    records = {r["student"]: r for r in json.loads((course / "out" / "results.json").read_text())}
    for student, test in reference_plants.NOT_WRITTEN.items():
        if student in plants.PLANTS:
            msg = records[student]["graded"][0]["results"][test]["message"]
            assert "did not write" in msg and "checks passed" in msg, (student, msg)
