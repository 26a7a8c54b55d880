"""Experiment `captioning` at fast scale: the schema of its result and what must hold anywhere.

No verdict is asserted: the fast scale trains a tiny model for a few steps. What holds on any
machine: every arm has its all-correct and per-attribute accuracies over prompts x seeds with
Wilson intervals, the headline is the auto - web difference of the pooled accuracies, the
prompts name every attribute equally often, the auto-captions are scored against the scenes'
ground truth, and the figure exists.
"""
import math
from collections import Counter
from pathlib import Path

import pytest
from experiment_cache import private_cache

from reference_impl.data.captions import parse_caption
from reference_impl.experiments import captioning, runner

FAST = captioning.EXPERIMENT.scales["fast"]


@pytest.fixture(scope="module")
def result(probe, tmp_path_factory):
    with private_cache(tmp_path_factory):
        yield runner.run_experiment("captioning", "fast", workers=1, progress=False)


def test_every_arm_has_its_accuracies(result):
    n = FAST["num_prompts"] * len(result.seeds)
    for arm in captioning.ARMS:
        for what in ("all correct",) + captioning.ATTRS:
            a = result.arm(f"{arm}: {what}")
            assert a.n == n and a.interval == "Wilson" and len(a.per_seed) == len(result.seeds)
            assert 0 <= a.value <= 1 and a.value == pytest.approx(sum(a.per_seed) / len(a.per_seed))
    assert result.verdict in runner.VERDICTS and result.reason and result.rule


def test_all_correct_never_exceeds_any_attribute(result):
    for arm in captioning.ARMS:
        top = result.arm(f"{arm}: all correct").value
        assert all(top <= result.arm(f"{arm}: {a}").value + 1e-12 for a in captioning.ATTRS)


def test_headline_is_the_paired_difference(result):
    h = result.headline
    assert h.name == "auto - web: attribute accuracy" and h.interval == "bootstrap"
    assert h.value == pytest.approx(result.arm("auto: attribute accuracy").value
                                    - result.arm("web: attribute accuracy").value)
    assert h.n == FAST["num_prompts"]
    both = result.arm("auto - web: all correct")
    assert both.value == pytest.approx(result.arm("auto: all correct").value
                                       - result.arm("web: all correct").value)


def test_attribute_accuracy_is_the_mean_of_the_five(result):
    for arm in captioning.ARMS:
        five = [result.arm(f"{arm}: {a}").value for a in captioning.ATTRS]
        assert result.arm(f"{arm}: attribute accuracy").value == pytest.approx(sum(five) / 5)


def test_intervals_contain_their_values(result):
    for a in result.arms:
        if math.isfinite(a.lo) and math.isfinite(a.hi):
            assert a.lo - 1e-9 <= a.value <= a.hi + 1e-9, a


def test_auto_captions_are_scored_against_the_truth(result):
    cap = result.details["captioner"]
    assert set(captioning.ATTRS) | {"exact"} <= set(cap)
    assert all(0 <= v <= 1 for v in cap.values())
    assert cap["exact"] <= min(cap[a] for a in captioning.ATTRS) + 1e-12  # exact = all five right
    for web, auto, rich in result.details["examples"]:
        assert set(captioning.ATTRS) <= set(parse_caption(auto)) and rich  # a full description


def test_prompts_name_every_attribute_equally_often():
    ps = captioning.prompts(48)
    asked = [parse_caption(p) for p in ps]
    assert all(set(captioning.ATTRS) <= set(a) for a in asked)
    for attr, k in (("kind", 4), ("colour", 6), ("size", 2), ("count", 3), ("background", 3)):
        assert set(Counter(a[attr] for a in asked).values()) == {48 // k}, attr
    assert captioning.prompts(48) == ps  # seeded: every arm and seed sees the same prompts


def test_figure_exists(result):
    assert len(result.figures) == 1 and Path(result.figures[0]).stat().st_size > 1000


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="multiple of 12"):
        captioning.units({**FAST, "num_prompts": 100}, [0])
