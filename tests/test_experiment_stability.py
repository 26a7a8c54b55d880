"""Experiment `stability` at fast scale: the schema of its result and what must hold anywhere.

No verdict is asserted: at fast scale each point is one seed. What holds on any machine: every
(arm, LR) point is there with n = seeds and a Wilson interval around its failed share, the three
rows are decided (headline: the pooled failed share; recovered spikes; the edge's move), the
four bracketing gates are reported, the figures exist, the two arms of a seed start from the same
loss (same weights, batch and noise; the arms differ only after the first update), each run has
exactly one outcome, and the monitor's log has one entry per step it ran. The outcome rule and
the edge of stability are checked on hand-made logs, without training.
"""
import itertools
import math
from pathlib import Path

import pytest
from experiment_cache import private_cache

from reference_impl.experiments import runner, stability


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    with private_cache(tmp_path_factory):
        yield runner.run_experiment("stability", "fast", workers=1, progress=False)


def test_schema_and_arms(result):
    assert result.verdict in runner.VERDICTS and result.reason and result.claim and result.rule
    lrs = stability.SCALES["fast"]["lrs"]
    names = {a.name for a in result.arms}
    for lr in lrs:
        for label in stability.ARMS.values():
            assert f"{label} @ lr {lr:g}" in names
    for label in stability.ARMS.values():
        assert f"edge of stability, {label}" in names
    assert result.headline.name == "failed share, no guards - guards"
    assert result.headline.n == len(result.seeds)
    for a in result.arms:
        if "@ lr" in a.name:
            assert a.interval == "Wilson" and a.n == len(result.seeds) and 0 <= a.value <= 1, a


def test_rows_are_decided_each_on_its_own(result):
    labels = [r.label for r in result.rows]
    assert labels == ["guards cut the share of runs that fail (NaN or unrecovered)",
                      "guards cut recovered spikes", "the edge of stability moves up"]
    assert result.rows[0].measured.name == result.headline.name
    assert result.rows[1].measured.name == "recovered-spike share, no guards - guards"
    assert result.rows[2].measured.name == "edge of stability: log2(guarded / bare)"
    for r in result.rows:
        assert r.kind == "claim" and r.verdict in runner.ROW_VERDICTS["claim"] and r.rule, r


def test_gates_reported(result):
    keys = {g["key"] for g in result.gate}
    assert keys == {f"{a}_{what}" for a in stability.ARMS
                    for what in ("stable_at_lowest_lr", "failed_at_highest_lr")}
    for g in result.gate:
        assert 0 <= g["value"] <= 1 and g["op"] == ">=" and g["threshold"] == stability.GATE
    assert result.gate_met == all(g["met"] for g in result.gate)
    if not result.gate_met:
        assert all(r.verdict == runner.UNDERPOWERED for r in result.rows)


def test_intervals_contain_their_values(result):
    for a in result.arms:
        if math.isfinite(a.lo) and math.isfinite(a.hi):
            assert a.lo - 1e-9 <= a.value <= a.hi + 1e-9, a


def test_figures_exist(result):
    names = {Path(f).name for f in result.figures}
    assert "divergence_share.png" in names
    assert ("health_log.png" in names) == (result.details["event"] is not None)
    for f in result.figures:
        assert Path(f).exists() and Path(f).stat().st_size > 1000, f


def test_rows_and_outcomes(result):
    rows = result.details["rows"]
    lrs = stability.SCALES["fast"]["lrs"]
    assert len(rows) == len(stability.ARMS) * len(lrs)
    for r in rows:
        assert set(r["outcomes"]) == set(stability.OUTCOMES)
        assert sum(r["outcomes"].values()) == r["n"] == len(result.seeds)
        assert r["failed"] == r["diverged"] == sum(r["outcomes"][k] for k in stability.FAILS)
        assert sum(r["causes"].values()) == r["failed"]  # the failing outcomes only
        assert set(r["causes"]) <= set(stability.FAILS)
        assert r["recovered_spikes"] == r["outcomes"]["recovered spike"]
        assert r["share"] == pytest.approx(r["failed"] / r["n"])
        assert set(r["per_seed"]) <= set(stability.OUTCOMES) and len(r["per_seed"]) == r["n"]
        assert len(r["peak_ratio"]) == len(r["loss_end"]) == r["n"]
    edges = result.details["edges"]
    for a in stability.ARMS:
        assert len(edges[a]["per_seed"]) == len(result.seeds)
        assert set(edges[a]["censored"]) <= {"", "below", "above"}


def test_headline_is_the_pooled_difference(result):
    """The headline's per-seed values: failed share over the grid, bare minus guarded."""
    rows = result.details["rows"]
    per_arm = {a: sum(r["failed"] for r in rows if r["arm"] == a) for a in stability.ARMS}
    n = len(stability.SCALES["fast"]["lrs"]) * len(result.seeds)
    assert result.headline.value == pytest.approx((per_arm["bare"] - per_arm["guarded"]) / n)


def test_arms_start_from_the_same_loss(result):
    """Same seed: same weights, batch and noise, so step 1's loss is identical in both arms."""
    ev = result.details["event"]
    if ev is None:
        pytest.skip("no bare run failed at fast scale on this machine: no event to compare")
    assert ev["bare"]["loss"][0] == ev["guarded"]["loss"][0]
    assert ev["bare"]["lr"][0] > ev["guarded"]["lr"][0]  # warm-up starts low
    for arm in stability.ARMS:
        c = ev[arm]
        assert len(c["step"]) == len(c["loss"]) == len(c["skipped"]) == len(c["spike"])
        assert c["step"] == list(range(1, len(c["step"]) + 1))


def _curve(losses, skipped=None, spike=None):
    n = len(losses)
    return {"step": list(range(1, n + 1)), "loss": losses, "grad_norm": [1.0] * n,
            "skipped": skipped or [False] * n, "spike": spike or [False] * n}


def test_outcome_rule_on_hand_made_logs():
    calm = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5]
    out = stability.judge(_curve(calm), aborted=False, steps=7)
    assert out["outcome"] == "stable" and not out["failed"]
    # a NaN is a failure even if the run goes on and ends low
    nan = _curve([1.0, None, 0.5], skipped=[False, True, False])
    out = stability.judge(nan, False, 3)
    assert out["outcome"] == "nan" and out["failed"] and out["skipped"] == 1
    assert out["loss_end"] == pytest.approx(0.75)
    # an abort (TrainingDiverged) is a NaN, whatever the finite steps before it looked like
    assert stability.judge(_curve(calm), aborted=True, steps=40)["outcome"] == "nan"
    # finite, ends above END_FACTOR x its start: unrecovered (a failure), spiked or not
    up = [1.0] + [2.5] * 6
    assert stability.judge(_curve(up), False, 7)["outcome"] == "unrecovered"
    peaked_high = [1.0, 30.0, 5.0, 3.0, 3.0, 3.0, 3.0]
    out = stability.judge(_curve(peaked_high), False, 7)
    assert out["outcome"] == "unrecovered" and out["failed"] and out["peaked"]
    # rose above PEAK_FACTOR x its start, but ends low: a recovered spike, not a failure
    peaked = [1.0, 30.0, 5.0, 1.0, 0.9, 0.8, 0.7]
    out = stability.judge(_curve(peaked), False, 7)
    assert out["outcome"] == "recovered spike" and not out["failed"]
    assert out["peak_ratio"] == pytest.approx(30.0)
    # the monitor flagged a spike, but the run ends low: also a recovered spike
    spiked = _curve(calm, spike=[False] * 6 + [True])
    assert stability.judge(spiked, False, 7)["outcome"] == "recovered spike"
    # just under both factors: stable
    edgy = [1.0, 9.9, 1.0, 1.9, 1.9, 1.9, 1.9]
    assert stability.judge(_curve(edgy), False, 7)["outcome"] == "stable"
    # the outcomes are exclusive: every output names exactly one
    for c in (calm, up, peaked, edgy):
        assert stability.judge(_curve(c), False, 7)["outcome"] in stability.OUTCOMES


def test_edge_of_stability():
    lrs = [0.01, 0.02, 0.04, 0.08]
    assert stability.edge([False, False, True, True], lrs) == (0.02, "")
    # the last LR before the *first* failure: a lucky pass above it does not move the edge
    assert stability.edge([False, True, False, True], lrs) == (0.01, "")
    assert stability.edge([False] * 4, lrs) == (0.08, "above")
    assert stability.edge([True] * 4, lrs) == (pytest.approx(0.005), "below")
    assert stability.grid_step(stability.FULL_LRS) == pytest.approx(math.log2(10 ** 0.2), abs=0.01)


def test_grid_brackets_and_is_log_spaced():
    lrs = stability.FULL_LRS
    assert lrs == sorted(lrs) and len(lrs) >= 8
    steps = [math.log10(b / a) for a, b in itertools.pairwise(lrs)]
    assert all(abs(s - 0.2) < 0.03 for s in steps)
    assert stability.SCALES["full"]["lrs"] == lrs
    for scale in stability.SCALES.values():
        assert scale["base"] == "laptop" and scale["preset"] == "laptop"


def test_unknown_arm_is_refused():
    with pytest.raises(ValueError, match="unknown arm"):
        stability.overrides("sloppy", 0.1, stability.SCALES["fast"])
