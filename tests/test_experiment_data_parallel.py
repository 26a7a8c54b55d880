"""Experiment `data_parallel` at fast scale: 1 process vs torchrun 2 processes on the laptop preset.

No verdict and no timing is asserted (one seed has no interval; speed is the machine's). What
holds anywhere: both arms train the same model (final weights within 1e-5 and the same losses,
as tests/test_ddp.py checks for the ci preset), the speed-up is the ratio of the step times,
and the all-reduce share is a fraction.
"""
from pathlib import Path

import pytest

from reference_impl.experiments import data_parallel, runner


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("REFERENCE_IMPL_CACHE", str(tmp_path_factory.mktemp("cache")))  # private: xdist-safe
    res = runner.run_experiment("data_parallel", "fast", workers=1, progress=False)
    yield res
    mp.undo()


def test_two_processes_train_the_same_model(result):
    for outs in result.details["per_resolution"].values():
        for o in outs:
            assert o["max_weight_diff"] <= data_parallel.TOL
            assert o["losses_1"] == pytest.approx(o["losses_2"], rel=1e-5)


def test_speedup_is_the_ratio_of_step_times(result):
    for outs in result.details["per_resolution"].values():
        for o in outs:
            assert o["speedup"] == pytest.approx(o["step_s_1"] / o["step_s_2"])
            assert o["img_s_2"] / o["img_s_1"] == pytest.approx(o["speedup"])
            assert 0 < o["allreduce_share"] and o["grad_bytes"] > 0
    res = data_parallel.SCALES["fast"]["resolutions"][-1]
    assert result.headline.name == f"{res} px: speed-up 2 vs 1"
    assert result.verdict == "inconclusive"  # one seed: no interval, by the rule
    for f in result.figures:
        assert Path(f).exists() and Path(f).stat().st_size > 1000, f
