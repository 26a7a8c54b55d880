"""Experiment 2 (noise_offset) at fast scale: the result's schema and the invariants that hold
on any machine. The verdict itself is not asserted: a ci base fine-tuned for four tiny steps
teaches no brightness, and it cannot draw, so the gate is not met and every row is underpowered.
"""
import math
from pathlib import Path

import pytest
from experiment_cache import private_cache

from reference_impl.experiments import common, noise_offset, runner

FAST = noise_offset.EXPERIMENT.scales["fast"]
ROWS = ["offset 0.1 narrows the grey gap", "zero terminal SNR + v + trailing narrows it",
        "offset 0.1 costs at most 0.05 prompt accuracy"]


@pytest.fixture(scope="module")
def result(probe, tmp_path_factory):
    # the session's probe, already in memory; the ci bases are built in the private cache
    with private_cache(tmp_path_factory,
                       patch=[(common, "_PROBE", probe), (common, "_VALIDATORS", {})]):
        yield runner.run_experiment("noise_offset", "fast", workers=1, progress=False)


def test_arms_rows_and_n(result):
    names = [a.name for a in result.arms]
    for arm in noise_offset.ARMS:
        for name in (arm, f"{arm} spread", f"{arm} prompt accuracy"):
            assert name in names
    assert result.headline.name == "gap reduction by offset 0.1"
    assert all(a.n == len(result.seeds) == 1 for a in result.arms)
    assert result.verdict in runner.VERDICTS and math.isnan(result.headline.lo)  # one seed
    assert [r.label for r in result.rows] == ROWS
    assert [r.kind for r in result.rows] == ["claim", "claim", "constraint"]


def test_gate_reads_the_plain_arm_and_is_not_met(result):
    """The gate is the plain arm's accuracy; a ci base cannot pass it, so nothing is decided."""
    gate = result.gate[0]
    assert gate["key"] == "control_acc_kcb" and gate["op"] == ">=" and gate["threshold"] == 0.6
    assert gate["value"] == pytest.approx(result.arm("plain prompt accuracy").value)
    assert 0.0 <= gate["value"] < 0.6
    assert not result.gate_met and {r.verdict for r in result.rows} == {"underpowered"}


def test_paired_differences(result):
    v = {a.name: a.value for a in result.arms}
    assert result.headline.value == pytest.approx(v["plain"] - v["offset_0.1"])
    assert v["gap reduction by zsnr+v+trailing"] == pytest.approx(v["plain"] - v["zsnr_v"])
    assert v["gap reduction by the plain fine-tune"] == pytest.approx(v["base"] - v["plain"])
    assert v["prompt accuracy drop by offset 0.1"] == pytest.approx(
        v["plain prompt accuracy"] - v["offset_0.1 prompt accuracy"])
    for arm, acc in result.details["accuracy"].items():
        assert all(0.0 <= a <= 1.0 for a in acc), arm


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
    variants = {a: set(v) for a, v in result.details["variants"].items()}
    assert variants["zsnr_v"] == {"trailing4"}  # zero SNR only trails
    assert variants["plain"] == variants["offset_0.1"] == variants["base"] == {"leading4",
                                                                              "trailing4"}
    assert set(result.details["spacing"]) == {"leading4", "trailing4"}


def test_fine_tunes_start_from_the_plain_noise_base_and_ship_their_schedule(result):
    """The base was trained without offset noise; zsnr_v's exported scheduler predicts v on
    the zero-terminal-SNR schedule and trails, the eps arms' do not."""
    assert [b["overrides"] for b in result.details["base"]] == [["diffusion.noise_offset=0"]]
    sched = result.details["scheduler"]
    assert sched["zsnr_v"] == {"prediction_type": "v_prediction", "zero_terminal_snr": True,
                               "timestep_spacing": "trailing"}
    for arm in ("base", "plain", "offset_0.1"):
        assert sched[arm] == {"prediction_type": "epsilon", "zero_terminal_snr": False,
                              "timestep_spacing": "leading"}, arm
    assert set(result.details["fine_tune"]) == {"plain", "offset_0.1", "zsnr_v"}
    for arm, recs in result.details["fine_tune"].items():
        assert all(math.isfinite(r["loss_start"]) and math.isfinite(r["loss_end"])
                   for r in recs), arm
    secs = result.details["seconds"]
    assert all(s[0]["fine_tune"] > 0 for a, s in secs.items() if a != "base")


def test_histograms_count_every_sample(result):
    h = result.details["histograms"]
    n = FAST["num_prompts"]
    assert all(sum(h[a]) == n for a in noise_offset.ARMS)
    assert sum(h["data"]) == n * FAST["real_per_prompt"]


def test_prompts_ask_for_dark_or_light():
    p = noise_offset.prompts(96)
    assert len(p) == 96 and not any("grey" in t for t in p)
    assert sum("dark" in t for t in p) == sum("light" in t for t in p) == 48


def test_figures_exist(result):
    assert [Path(f).name for f in result.figures] == ["brightness.png", "spacing.png"]
    assert all(Path(f).stat().st_size > 0 for f in result.figures)
