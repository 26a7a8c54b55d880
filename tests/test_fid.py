"""Domain-FID: the Frechet distance against its closed form and torchmetrics, FID_infinity,
and the sanity curve (0 against itself, growing with damage)."""
import itertools
import json
import warnings

import numpy as np
import pytest
import torch

from reference_impl.data.shapes import ShapesWorld, WorldConfig
from reference_impl.evaluation.fid import (
    FeatureStats,
    corruption_curve,
    fid,
    fid_infinity,
    frechet_distance,
    plot_corruption_curve,
)


def test_diagonal_covariances_match_closed_form():
    # Diagonal S1, S2 commute, so (S1 S2)^1/2 = diag(sqrt(a b)) and
    # d^2 = ||mu1 - mu2||^2 + sum (sqrt a_i - sqrt b_i)^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    a, b = rng.uniform(0.1, 3, 20), rng.uniform(0.1, 3, 20)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_agrees_with_torchmetrics_on_random_features():
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(400, 32, generator=g, dtype=torch.float64)
    f2 = 0.7 * torch.randn(300, 32, generator=g, dtype=torch.float64) @ torch.randn(
        32, 32, generator=g, dtype=torch.float64) * 0.3 + 0.5
    s1, s2 = FeatureStats.of(f1), FeatureStats.of(f2)
    oracle = _compute_fid(*(torch.from_numpy(x) for x in (s1.mu, s1.sigma, s2.mu, s2.sigma)))
    result = fid(f1, f2)
    assert result.value == pytest.approx(float(oracle), rel=1e-6)
    assert (result.n1, result.n2) == (400, 300)
    assert json.loads(json.dumps(result.to_dict()))["name"] == "domain-FID (probe features)"


def test_singular_covariances_still_give_a_finite_distance():
    rng = np.random.default_rng(1)
    few = rng.normal(size=(10, 64))  # 10 samples in 64 dimensions: rank-9 covariance
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # handled inside, never leaked into a training log
        value = fid(few, rng.normal(size=(12, 64))).value
    assert np.isfinite(value) and value > 0


def test_bad_features_are_rejected():
    with pytest.raises(ValueError, match="N >= 2"):
        FeatureStats.of(np.zeros((1, 8)))
    with pytest.raises(ValueError, match="non-finite"):
        FeatureStats.of(np.full((4, 8), np.nan))
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fid_infinity_removes_most_of_the_finite_sample_bias():
    # Generated ~ N(0, S) in 16-d against the exact statistics of N(0, S): the true FID is 0,
    # and FID_N > 0 is pure finite-sample bias. Averaged over 4 draws, FID_inf is much closer.
    d, n = 16, 2000
    s = np.linspace(0.5, 2.0, d)
    exact = FeatureStats(np.zeros(d), np.diag(s), n=10 ** 9)
    biased, extrapolated = [], []
    for seed in range(4):
        gen = np.random.default_rng(seed).normal(size=(n, d)) * np.sqrt(s)
        biased.append(fid(gen, exact).value)
        inf = fid_infinity(gen, exact, num_points=10, seed=0)
        extrapolated.append(inf.value)
        assert inf.slope > 0 and len(inf.sizes) == 10 and (inf.n1, inf.n2) == (n, 10 ** 9)
    assert np.mean(biased) > 0.03
    assert abs(np.mean(extrapolated)) < 0.3 * np.mean(biased)


def test_fid_is_zero_against_itself_and_grows_with_corruption(probe, tmp_path):
    world = ShapesWorld(WorldConfig(seed=3, hq_fraction=1.0), size=400, resolution=32)
    images = torch.stack([x["image"] for x in world.__getitems__(list(range(400)))])
    levels = {"blur": [0, 1.0, 2.0, 3.0], "noise": [0, 0.2, 0.4, 0.8]}
    curve = corruption_curve(probe, images, images, levels)
    for kind, points in curve.items():
        fids = [p["fid"] for p in points]
        assert fids[0] < 1e-6, f"{kind}: FID of a set against itself is {fids[0]}"
        assert all(b > a for a, b in itertools.pairwise(fids)), f"{kind} not monotonic: {fids}"
        assert points[0]["n1"] == points[0]["n2"] == 400
    path = tmp_path / "fid_vs_corruption.png"
    plot_corruption_curve(curve, path)
    assert path.stat().st_size > 5000
