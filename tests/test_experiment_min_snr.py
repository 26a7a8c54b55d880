"""Experiment `min_snr` at fast scale: the schema of its result and what must hold anywhere.

No verdict is asserted: the fast scale trains a tiny model for a dozen steps, and its FID says
nothing about convergence. What holds on any machine: every gamma has its steps arm and its
final-FID arm with n = seeds, each non-uniform gamma a speed-up that is the ratio of the mean
steps, intervals contain their values, a censored run sits exactly at the budget, and the
figures exist. The threshold crossing and the censoring rules of the verdict are checked on
hand-made curves, without training.
"""
import math
from pathlib import Path

import pytest
from experiment_cache import private_cache

from reference_impl.experiments import min_snr, runner

FAST = min_snr.EXPERIMENT.scales["fast"]


@pytest.fixture(scope="module")
def result(probe, tmp_path_factory):
    with private_cache(tmp_path_factory):
        yield runner.run_experiment("min_snr", "fast", workers=1, progress=False)


def test_every_gamma_has_its_arms(result):
    n = len(result.seeds)
    for g in FAST["gammas"]:
        name = min_snr._arm(g)
        steps, final = result.arm(name), result.arm(f"{name}: final FID")
        assert steps.n == n and len(steps.per_seed) == n and steps.n_what.startswith("seeds")
        assert final.n == n and all(f > 0 for f in final.per_seed)  # an FID is a distance
        if g != min_snr.BASELINE:
            assert result.arm(f"speed-up {name} vs uniform").interval == "bootstrap"
    assert result.headline.name == f"speed-up {min_snr._arm(min_snr.TREATED)} vs uniform"
    assert result.verdict in runner.VERDICTS and result.reason and result.claim and result.rule


def test_speedup_is_the_ratio_of_mean_steps(result):
    base = result.arm(min_snr._arm(min_snr.BASELINE)).per_seed
    treated = result.arm(min_snr._arm(min_snr.TREATED)).per_seed
    assert result.headline.value == pytest.approx(sum(base) / sum(treated))
    assert result.headline.n == len(result.seeds)


def test_intervals_contain_their_values(result):
    for a in result.arms:
        if math.isfinite(a.lo) and math.isfinite(a.hi):
            assert a.lo - 1e-9 <= a.value <= a.hi + 1e-9, a


def test_steps_lie_in_the_budget_and_censored_runs_at_it(result):
    d = result.details
    for arm, steps in d["steps"].items():
        for s, c in zip(steps, d["censored"][arm]):
            assert 0 < s <= d["budget"]
            assert (s == d["budget"]) if c else True
    for arm, curve in d["curves"].items():
        assert curve["step"] == list(range(FAST["every"], FAST["steps"] + 1, FAST["every"]))
        assert len(d["loss_by_t"][arm]) == min_snr.NUM_T_BINS


def test_figures_exist(result):
    assert len(result.figures) == 3
    for f in result.figures:
        assert Path(f).exists() and Path(f).stat().st_size > 1000, f


def test_threshold_crossing_is_interpolated_and_censored():
    curve = [{"step": 20, "fid": 1500.0}, {"step": 40, "fid": 1100.0}, {"step": 60, "fid": 1300.0}]
    assert min_snr.steps_to(curve, 1200.0, 240) == (pytest.approx(35.0), False)  # 3/4 of the way
    assert min_snr.steps_to(curve, 2000.0, 240) == (20.0, False)  # below at the first measurement
    assert min_snr.steps_to(curve, 1000.0, 240) == (240.0, True)  # never: censored at the budget


def test_censoring_downgrades_only_the_verdict_it_biases():
    # a censored gamma=5 run inflates the speed-up: it cannot support "reproduced"...
    assert min_snr._verdict(1.5, 2.5, 0, 1)[0] == "inconclusive"
    assert min_snr._verdict(1.5, 2.5, 1, 0)[0] == "reproduced"
    # ...and a censored uniform run deflates it: it cannot support "not reproduced"
    assert min_snr._verdict(0.5, 0.8, 1, 0)[0] == "inconclusive"
    assert min_snr._verdict(0.5, 0.8, 0, 1)[0] == "not reproduced"
    assert min_snr._verdict(0.95, 1.05, 0, 0)[0] == "not reproduced"  # inside 1 +- 0.1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="must include 0 and 5"):
        min_snr.units({**FAST, "gammas": [0.0, 1.0]}, [0])
    with pytest.raises(ValueError, match="positive FID"):
        min_snr.units({**FAST, "threshold": 0}, [0])
