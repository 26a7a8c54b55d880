"""Experiment `dpo` at fast scale, and the "larger" judge it trains on.

No verdict is asserted: the fast scale trains a tiny model for a few steps. What holds on any
machine: every arm (sft, each beta, rft) has its rates over the held-out prompts with Wilson
intervals, the SFT arm's drift from itself is exactly 0, every stored pair's chosen image is
the larger one (ties are exactly the equal ones), and the held-out prompts name no size and
none of them trains. The judge's pixel arithmetic is checked against the analytic area of
rendered shapes.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from experiment_cache import alignment_cache

from reference_impl.alignment.preferences import foreground_area, random_prompts
from reference_impl.data.captions import parse_caption
from reference_impl.data.shapes import make_scene, render
from reference_impl.experiments import dpo, runner

FAST = dpo.EXPERIMENT.scales["fast"]


@pytest.fixture(scope="module")
def private_cache(probe, tmp_path_factory):
    """A private cache (xdist-safe) that shares the session's curation models and probe."""
    with alignment_cache(tmp_path_factory) as root:
        yield root


@pytest.fixture(scope="module")
def result(private_cache):
    return runner.run_experiment("dpo", "fast", workers=1, progress=False)


def test_every_arm_is_measured_on_the_held_out_prompts(result):
    n = FAST["num_eval"]
    names = ["sft", "rft"] + [f"dpo beta={b:g}" for b in FAST["betas"]]
    for name in names:
        for what in ("large shapes", "named-attribute accuracy"):
            a = result.arm(f"{name}: {what}")
            assert a.n == n and a.interval == "Wilson" and 0 <= a.value <= 1
        if name != "sft":
            assert result.arm(f"{name}: win rate vs SFT").n == n
    assert result.headline.name == f"dpo beta={dpo.HEADLINE_BETA:g}: win rate vs SFT"
    assert result.verdict in runner.VERDICTS and result.reason and result.rule


def test_intervals_contain_their_values(result):
    for a in result.arms:
        if math.isfinite(a.lo) and math.isfinite(a.hi):
            assert a.lo - 1e-9 <= a.value <= a.hi + 1e-9, a


def test_reference_has_no_drift_and_accuracy_drop_is_a_difference(result):
    d = result.details["arms"]
    assert d["sft"]["drift"] == 0.0
    for name, arm in d.items():
        if name != "sft":
            assert arm["drift"] >= 0 and arm["train_seconds"] > 0
            assert arm["acc_drop"] == pytest.approx(d["sft"]["named_acc"] - arm["named_acc"])


def test_pairs_are_judged_larger_and_ties_counted(result, private_cache):
    pairs = dpo.pairs(FAST)
    assert len(pairs) == FAST["pair_prompts"] * FAST["pairs_per_prompt"]
    c, r = np.array(pairs["chosen_area"]), np.array(pairs["rejected_area"])
    cm, rm = np.array(pairs["chosen_match"]), np.array(pairs["rejected_match"])
    assert ((cm > rm) | ((cm == rm) & (c >= r))).all()  # match first, then the larger
    assert (np.array(pairs["tie"]) == ((cm == rm) & (c == r))).all()
    held_out = dpo.eval_prompts(FAST, pairs["prompt"])
    assert not set(held_out) & set(pairs["prompt"])
    assert all("size" not in parse_caption(p) for p in held_out + list(pairs["prompt"]))


def test_figures_exist(result):
    assert len(result.figures) == 2
    for f in result.figures:
        assert Path(f).exists() and Path(f).stat().st_size > 1000, f


def test_wins_count_ties_half():
    a = {"match": [1.0, 1.0, 1.0, 0.5], "area": [0.3, 0.2, 0.1, 0.9]}
    b = {"match": [1.0, 1.0, 1.0, 1.0], "area": [0.2, 0.2, 0.2, 0.1]}
    assert dpo.wins(a, b) == [1.0, 0.5, 0.0, 0.0]  # the prompt match decides before the area


def test_speckle_is_not_foreground():
    x = torch.full((1, 3, 16, 16), -0.8)
    g = torch.Generator().manual_seed(0)
    speckle = x.clone()
    idx = torch.randperm(256, generator=g)[:20]  # 20 isolated-ish bright pixels
    speckle.view(1, 3, -1)[:, :, idx] = 1.0
    assert foreground_area(speckle).item() < 0.02
    x[:, :, 4:12, 4:12] = 0.8  # an 8x8 square; the median filter rounds off its 4 corner pixels
    assert foreground_area(x).item() == pytest.approx((64 - 4) / 256)


def test_foreground_area_matches_the_drawn_shapes():
    # one centred circle of radius r covers pi r^2 of the canvas; at 64 px the anti-aliased
    # edge moves the count by at most one pixel ring around it (2 pi r / 64)
    for colour, bg in (("purple", "grey"), ("yellow", "light"), ("blue", "dark")):
        s = make_scene("circle", colour, bg, size="large")
        r = float(s["radius"][0])
        x = render([s], 64) * 2 - 1
        assert foreground_area(x).item() == pytest.approx(math.pi * r * r, abs=2 * math.pi * r / 64)
    small = render([make_scene("circle", "red", "grey", count=2, size="small")], 32) * 2 - 1
    large = render([make_scene("circle", "red", "grey", count=2, size="large")], 32) * 2 - 1
    assert foreground_area(large) > foreground_area(small)
    assert foreground_area(torch.zeros(1, 3, 16, 16)).item() == 0.0


def test_prompts_without_size():
    ps = random_prompts(20, seed=3, name_size=False)
    assert len(set(ps)) == 20 and all("size" not in parse_caption(p) for p in ps)
    assert all({"kind", "colour", "background", "count"} <= set(parse_caption(p)) for p in ps)
    with pytest.raises(ValueError, match="distinct prompts"):
        random_prompts(4 * 6 * 3 * 3 + 1, seed=0, name_size=False)
