"""Experiment `resolution` at fast scale: the schema of its result and what must hold anywhere.

No verdict and no threshold on a trained model is asserted: at fast scale the models see a
handful of steps. What is checked is what holds on any machine: every arm is there with the
right n, each interval contains its value, the figures exist, the FLOP counts grow with the
pixel count (exact and machine-independent), and the two curriculum arms spend the same budget.
"""
import math
from pathlib import Path

import pytest
from experiment_cache import private_cache

from reference_impl.config import StageConfig
from reference_impl.experiments import common, resolution, runner


@pytest.fixture(scope="module")
def result(probe, tmp_path_factory):
    # the session's probe, already in memory
    with private_cache(tmp_path_factory, patch=[(common, "_PROBE", probe), (common, "_VALIDATORS", {})]):
        yield runner.run_experiment("resolution", "fast", workers=1, progress=False)


def test_schema_and_arms(result):
    assert result.verdict in runner.VERDICTS and result.reason and result.claim and result.rule
    names = {a.name for a in result.arms}
    for arm in resolution.CURRICULUM_ARMS + resolution.QUALITY_ARMS:
        assert arm in names
    assert result.headline.name == "curriculum - 32px only"
    prompts = resolution.SCALES["fast"]["eval"]["prompts"]
    assert result.headline.n == prompts * len(result.seeds)  # seed x prompt cells


def test_intervals_contain_their_values(result):
    for a in result.arms:
        if math.isfinite(a.lo) and math.isfinite(a.hi):
            assert a.lo - 1e-9 <= a.value <= a.hi + 1e-9, a
        assert a.n >= 1, a


def test_flops_grow_with_pixels(result):
    flops = {int(r): f for r, f in result.details["cost"]["flops_per_image"].items()}
    assert flops[16] < flops[32] < flops[64]
    # convolutions scale exactly with pixels; self-attention faster, per-image constants slower
    assert 3.0 < flops[32] / flops[16] < 5.0 and 12.0 < flops[64] / flops[16] < 20.0
    ratio = result.arm("FLOPs per image 64/16 px")
    assert ratio.interval == "exact" and ratio.value == pytest.approx(flops[64] / flops[16])


def test_curriculum_arms_spend_an_equal_flop_budget(result):
    cur = result.details["curriculum"]
    only, curr = cur[resolution.CURRICULUM_ARMS[0]][0], cur[resolution.CURRICULUM_ARMS[1]][0]
    assert [s["resolution"] for s in curr["stages"]] == [16, 32]
    assert only["stages"] == [{"steps": 2, "resolution": 32}]
    # rounding a step count costs at most one 16 px step of the budget
    assert curr["flops"] == pytest.approx(only["flops"], rel=0.5 / curr["stages"][0]["steps"] + 0.02)
    assert curr["steps"] > only["steps"]  # the cheap steps buy more updates


def test_quality_arms_use_the_scarce_sharp_set():
    s = resolution.SCALES["full"]
    fn = resolution.scarce_sharp_data(s["quality"]["sharp_images"])
    cfg = resolution._config(s, [{"steps": 4, "resolution": 16}], 0, hq_fraction=0.3)
    sharp = fn(cfg.data, StageConfig(resolution=16, hq_fraction=1.0))
    bulk = fn(cfg.data, StageConfig(resolution=16))
    assert len(sharp) == s["quality"]["sharp_images"] < len(bulk) == s["num_train"]
    assert sharp.start == len(bulk)  # disjoint from the bulk
    assert all(sharp.scene(i)["blur"] == sharp.scene(i)["noise"] == 0 for i in range(20))
    plan = resolution.quality_plan(s, "mixed then sharp")
    assert sum(p["steps"] for p in plan) == s["quality"]["steps"]  # equal steps, equal FLOPs
    assert plan[-1]["hq_fraction"] == 1.0


def test_figures_exist(result):
    assert {Path(f).name for f in result.figures} == {"cost.png", "curriculum.png", "quality.png",
                                                      "samples.png"}
    assert all(Path(f).stat().st_size > 0 for f in result.figures)


def test_unknown_arm_is_refused():
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        resolution.run_unit({"arm": "nope", "seed": 0}, resolution.SCALES["fast"])
