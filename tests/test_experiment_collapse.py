"""Experiment `collapse` at fast scale, and its parts on hand-made inputs.

No verdict is asserted: the fast scale trains a tiny model for a few steps per generation. What
holds on any machine: every share's chain starts from the one shared generation 0, has one
measurement per generation, and its degradation ratio is FID(last) / FID(first) per seed; the
training set of a generation holds exactly the asked share of real images; precision and
recall behave as their definition says on point sets whose answer is known.
"""
import math
from pathlib import Path

import pytest
import torch
from experiment_cache import private_cache

from reference_impl.data.shapes import WorldConfig, render, sample_scene
from reference_impl.experiments import collapse, runner

FAST = collapse.EXPERIMENT.scales["fast"]


@pytest.fixture(scope="module")
def result(probe, tmp_path_factory):
    with private_cache(tmp_path_factory):
        yield runner.run_experiment("collapse", "fast", workers=1, progress=False)


def test_every_share_has_its_ratio(result):
    d, n = result.details, len(result.seeds)
    for r in FAST["real_shares"]:
        sh = f"{r:g}"
        ratio = result.arm(f"{collapse._share(r)}: FID ratio gen {FAST['generations'] - 1} / gen 0")
        fid = d["per_seed"][sh]["fid"]
        assert ratio.n == n and len(fid) == n and all(len(c) == FAST["generations"] for c in fid)
        assert ratio.per_seed == pytest.approx([c[-1] / c[0] for c in fid])
    assert result.headline.name.startswith("real share 0: FID ratio")
    assert result.verdict in runner.VERDICTS and result.reason and result.rule


def test_generation_zero_is_shared_by_every_share(result):
    per_seed = result.details["per_seed"]
    first = [c[0] for c in per_seed["0"]["fid"]]
    for sh in per_seed:
        assert [c[0] for c in per_seed[sh]["fid"]] == first  # the same model and samples


def test_measures_lie_in_their_ranges(result):
    for sh, m in result.details["per_seed"].items():
        for key in ("precision", "recall"):
            assert all(0 <= v <= 1 for c in m[key] for v in c), (sh, key)
        assert all(v > 0 for c in m["fid"] for v in c) and all(v >= 0 for c in m["rare_kind"] for v in c)
    for a in result.arms:
        if math.isfinite(a.lo) and math.isfinite(a.hi):
            assert a.lo - 1e-9 <= a.value <= a.hi + 1e-9, a


def test_figures_exist(result):
    assert len(result.figures) == 2
    for f in result.figures:
        assert Path(f).stat().st_size > 1000, f


def test_a_generation_trains_on_the_asked_share_of_real_images():
    world = WorldConfig(seed=0, unsafe_fraction=0.0, brand_fraction=0.0, hq_fraction=1.0)
    synthetic = torch.rand(3, 3, 16, 16) * 2 - 1
    data = collapse.MixedSet(world, real_start=40, num_real=7, synthetic=synthetic, resolution=16)
    assert len(data) == 10
    items = data.__getitems__([8, 0, 6, 9])
    real = render([sample_scene(world, 40), sample_scene(world, 46)], 16, world.seed) * 2 - 1
    assert torch.equal(items[0]["image"], synthetic[1]) and torch.equal(items[3]["image"], synthetic[2])
    assert torch.allclose(items[1]["image"], real[0]) and torch.allclose(items[2]["image"], real[1])
    assert all(it["caption"] == "" for it in items)  # unconditional: what is drawn is learned
    assert len(collapse.MixedSet(world, 0, 5, None, 16)) == 5  # generation 0: real only


def test_precision_and_recall_on_known_point_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 4, generator=g)
    assert collapse.precision_recall(real, real.clone()) == (1.0, 1.0)
    far = collapse.precision_recall(real, real + 100.0)
    assert far == (0.0, 0.0)
    # a collapsed generator: every sample near one real point - precise, but it covers little
    p, r = collapse.precision_recall(real, real[:1] + 0.01 * torch.randn(50, 4, generator=g))
    assert p == 1.0 and r < 0.2


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="must include 0"):
        collapse.units({**FAST, "real_shares": [0.5, 0.9]}, [0])
    with pytest.raises(ValueError, match=">= 2 generations"):
        collapse.units({**FAST, "generations": 1}, [0])
