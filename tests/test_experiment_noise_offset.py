"""Experiment 2 (noise_offset) at fast scale: the result's schema and the invariants that hold
on any machine. The verdict itself is not asserted: 8 training steps teach no brightness."""
import math
from pathlib import Path

import pytest
from experiment_cache import private_cache

from reference_impl.experiments import runner


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    with private_cache(tmp_path_factory):
        yield runner.run_experiment("noise_offset", "fast", workers=1, progress=False)


def test_arms_and_n(result):
    names = [a.name for a in result.arms]
    for arm in ("no_offset", "offset_0.1", "zsnr_v"):
        assert arm in names and f"{arm} spread" in names
    assert result.headline.name == "gap reduction by offset 0.1"
    assert all(a.n == len(result.seeds) == 1 for a in result.arms)
    assert result.verdict in runner.VERDICTS and math.isnan(result.headline.lo)  # one seed
    # the gate reads the control arm; eight tiny steps cannot pass it, so nothing is decided
    gate = result.gate[0]
    assert gate["key"] == "control_acc_kcb" and 0.0 <= gate["value"] <= 1.0
    assert not result.gate_met and {r.verdict for r in result.rows} == {"underpowered"}
    assert [r.label for r in result.rows] == ["offset 0.1 narrows the grey gap",
                                              "zero terminal SNR + v + trailing narrows it"]


def test_headline_is_the_paired_difference_of_the_gaps(result):
    gap = {a.name: a.value for a in result.arms}
    assert result.headline.value == pytest.approx(gap["no_offset"] - gap["offset_0.1"])


def test_brightness_is_physical(result):
    """Luma lies in [0, 1]; the data's dark backgrounds are darker than its light ones (the
    renderer's levels: 0.02-0.18 and 0.82-0.98), and a gap cannot exceed the data's contrast."""
    d = result.details["data"]
    assert 0.0 <= d["bg_dark"] <= 0.18 and 0.82 <= d["bg_light"] <= 1.0
    contrast = (d["bg_light"] - d["bg_dark"]) / 2
    for arm, by_variant in result.details["variants"].items():
        for variant, v in by_variant.items():
            assert all(0 <= x <= 1 for x in v["bg_dark"] + v["bg_light"]), (arm, variant)
            assert all(-contrast - 1e-6 <= g <= 1 - contrast for g in v["gap"])
            assert all(r >= 0 for r in v["spread_ratio"])
    assert set(result.details["variants"]["zsnr_v"]) == {"trailing4"}  # zero SNR only trails
    assert set(result.details["spacing"]) == {"leading4", "trailing4"}


def test_histograms_count_every_sample(result):
    h = result.details["histograms"]
    n = result.config["settings"]["num_prompts"]
    assert sum(h["no_offset"]) == n and sum(h["data"]) == n * result.config["settings"][
        "real_per_prompt"]


def test_figures_exist(result):
    assert [Path(f).name for f in result.figures] == ["brightness.png", "spacing.png"]
    assert all(Path(f).stat().st_size > 0 for f in result.figures)
