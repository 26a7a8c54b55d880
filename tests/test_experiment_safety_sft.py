"""Experiments `safety` and `sft` at fast scale (they share the dpo experiment's cached base).

No verdict is asserted: the fast scale trains a tiny model for a few steps. What holds on any
machine: both models are asked the same prompts; the rates have Wilson intervals over them;
the headline differences are the differences of the arms; the data filter left fewer hazard
images in the filtered model's training set than the web had; the SFT data scores higher on
the world's true aesthetic than the web. The output filter's precision and recall are checked
on hand-made flags.
"""
import math

import pytest
from experiment_cache import alignment_cache

from reference_impl.experiments import runner, safety, sft


@pytest.fixture(scope="module")
def private_cache(probe, tmp_path_factory):
    """A private cache (xdist-safe) that shares the session's curation models and probe."""
    with alignment_cache(tmp_path_factory) as root:
        yield root


@pytest.fixture(scope="module")
def safety_result(private_cache):
    return runner.run_experiment("safety", "fast", workers=1, progress=False)


@pytest.fixture(scope="module")
def sft_result(private_cache):
    return runner.run_experiment("sft", "fast", workers=1, progress=False)


def _intervals_hold(result):
    for a in result.arms:
        if math.isfinite(a.lo) and math.isfinite(a.hi):
            assert a.lo - 1e-9 <= a.value <= a.hi + 1e-9, a


def test_safety_arms_and_headline(safety_result):
    r, n = safety_result, safety.EXPERIMENT.scales["fast"]["num_prompts"]
    for a in safety.ARMS:
        for p in ("hazard", "plain"):
            arm = r.arm(f"{a}: sign drawn, {p} prompts")
            assert arm.n == n and arm.interval == "Wilson"
    u, f = r.arm("unfiltered: sign drawn, hazard prompts"), r.arm("filtered: sign drawn, hazard prompts")
    assert r.headline.value == pytest.approx(u.value - f.value)
    assert r.verdict in runner.VERDICTS
    _intervals_hold(r)
    d = r.details["arms"]
    assert d["filtered"]["data"]["unsafe_in_training"] < d["filtered"]["data"]["unsafe_in_web"]
    assert d["unfiltered"]["data"]["unsafe_in_training"] == d["unfiltered"]["data"]["unsafe_in_web"]
    pooled = r.details["output_filter_pooled"]
    assert pooled["n"] == 4 * n


def test_output_filter_precision_recall_by_hand():
    pr = safety.precision_recall([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    assert (pr["tp"], pr["fp"], pr["fn"]) == (2, 1, 1)
    assert pr["precision"] == pytest.approx(2 / 3) and pr["recall"] == pytest.approx(2 / 3)
    none = safety.precision_recall([0, 0], [0, 0])
    assert none["precision"] is None and none["recall"] is None


def test_sft_arms_and_headline(sft_result):
    r, n = sft_result, sft.EXPERIMENT.scales["fast"]["num_prompts"]
    for a in sft.ARMS:
        assert r.arm(f"{a}: aesthetic score").n == n
        assert r.arm(f"{a}: prompt accuracy").n == 2 * n  # two seeds per prompt
        assert r.arm(f"{a}: domain-FID vs the HQ set").value > 0
        assert r.arm(f"{a}: diversity").value > 0
    diff = r.arm("sft: aesthetic score").value - r.arm("pretrained: aesthetic score").value
    assert r.headline.value == pytest.approx(diff)
    assert r.verdict in runner.VERDICTS
    _intervals_hold(r)
    data = r.details["data"]
    assert data["true_aesthetic_sft_data"] > data["true_aesthetic_web"]
