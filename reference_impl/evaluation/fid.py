"""Frechet distance between two sets of features, and its sample-size-free extrapolation.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", arXiv 1706.08500, Sec. 3 / App. "FID"): fit a Gaussian to each set of features
and measure the Frechet (2-Wasserstein) distance between the two Gaussians,

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}).

Here the features are the *probe's* (see ``probe.py``), not Inception-v3's, so every number is a
"domain-FID (probe features)": comparable between runs of this course, not with published FIDs.

FID is biased upwards for finite samples, and the bias depends on the generator. Chong &
Forsyth 2020 ("Effectively Unbiased FID and Inception Score and where to find them",
arXiv 1911.07023, Sec. 3.1) show FID_N is linear in 1/N; fitting that line over several subset
sizes and reading it at 1/N = 0 gives FID_infinity. Always report N alongside an FID.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import scipy.linalg
import torch

NAME = "domain-FID (probe features)"


@dataclass(frozen=True)
class FeatureStats:
    """Gaussian fit of N feature vectors: mean (D,), covariance (D, D), float64."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, features) -> FeatureStats:
        """features: (N, D) tensor or array, N >= 2 -> their mean and unbiased covariance."""
        f = _as_array(features)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"FID needs features of shape (N >= 2, D), got {f.shape}")
        return cls(f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), len(f))


@dataclass(frozen=True)
class FIDResult:
    """An FID value with the sample counts it was computed from (it depends on them)."""

    value: float
    n1: int
    n2: int
    name: str = NAME

    def __float__(self) -> float:
        return self.value

    def to_dict(self) -> dict:
        return asdict(self)


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("FID got non-finite features (NaN or inf)")
    return x


def _sqrtm(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """Principal square root of a, and whether scipy warned that a is (near) singular."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # recorded here, so it never reaches the user's log
        root = scipy.linalg.sqrtm(a)
    return root, any(issubclass(w.category, (scipy.linalg.LinAlgWarning, RuntimeWarning))
                     for w in caught)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6,
                     max_imag: float = 1e-3) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), Heusel et al. 2017 (1706.08500).

    mu: (D,), sigma: (D, D). Float64 throughout. (S1 S2)^{1/2} is the principal square root of
    the product (scipy.linalg.sqrtm); when that product is singular (fewer samples than
    dimensions: scipy warns, or the root comes back non-finite), both covariances get
    ``eps * I`` added, as pytorch-fid does.
    Round-off leaves a small imaginary part: dropped if below ``max_imag`` (relative to the
    trace), an error above it.
    """
    mu1, mu2, s1, s2 = (_as_array(a) for a in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shape mismatch: mu {mu1.shape} {mu2.shape}, sigma {s1.shape} {s2.shape}")
    covmean, singular = _sqrtm(s1 @ s2)
    if singular or not np.isfinite(covmean).all():
        offset = eps * np.eye(len(mu1))
        covmean, _ = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        scale = max(1.0, abs(np.trace(s1)) + abs(np.trace(s2)))
        residue = np.abs(covmean.imag).max()
        if residue > max_imag * scale:
            raise ValueError(f"sqrtm(S1 S2) has an imaginary part of {residue:.3g}: the "
                             "covariances are badly conditioned (too few samples?)")
        covmean = covmean.real
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))  # a distance: tiny negative values are round-off


def _stats(x) -> FeatureStats:
    return x if isinstance(x, FeatureStats) else FeatureStats.of(x)


def fid(features1, features2) -> FIDResult:
    """Domain-FID between two sets: (N1, D) and (N2, D) features, or their FeatureStats."""
    a, b = _stats(features1), _stats(features2)
    return FIDResult(frechet_distance(a.mu, a.sigma, b.mu, b.sigma), a.n, b.n)


@dataclass(frozen=True)
class FIDInfinity:
    """FID extrapolated to infinitely many samples, with the line it was read from."""

    value: float  # intercept of FID_N = value + slope / N
    slope: float
    sizes: list[int]
    fids: list[float]
    n1: int
    n2: int
    name: str = NAME + ", extrapolated to N = infinity"

    def to_dict(self) -> dict:
        return asdict(self)


def fid_infinity(features, reference, sizes=None, num_points: int = 10, min_size: int | None = None,
                 seed: int = 0) -> FIDInfinity:
    """FID_infinity of Chong & Forsyth 2020 (arXiv 1911.07023, Sec. 3.1, Alg. 1).

    features: (N, D) generated features; reference: (M, D) features or FeatureStats (kept whole,
    as the paper keeps the real statistics fixed). For each size N_i in ``sizes`` (default:
    ``num_points`` sizes evenly spaced from ``min_size`` = N/5 up to N) draw a random subset of
    N_i generated features, compute FID_{N_i}, fit FID_N = FID_inf + slope / N by least squares,
    and return the intercept.
    """
    f = _as_array(features)
    ref = _stats(reference)
    n = len(f)
    if sizes is None:
        lo = min_size or max(2, n // 5)
        sizes = np.unique(np.linspace(lo, n, num_points).astype(int))
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 2 or max(sizes) > n:
        raise ValueError(f"fid_infinity needs >= 2 subset sizes in [2, {n}], got {sizes}")
    rng = np.random.default_rng(seed)
    fids = [fid(f[rng.choice(n, size=s, replace=False)], ref).value for s in sizes]
    slope, intercept = np.polyfit(1.0 / np.asarray(sizes, dtype=np.float64), fids, deg=1)
    return FIDInfinity(float(intercept), float(slope), sizes, [float(x) for x in fids], n, ref.n)


# --- how FID reacts to damage: the sanity curve the lecture shows -----------------------------

def corrupt(images: torch.Tensor, kind: str, level: float, seed: int = 0) -> torch.Tensor:
    """Damage images (B, 3, H, W) in [-1, 1]: "blur" (Gaussian, sigma = level pixels) or
    "noise" (additive Gaussian, std = level on the [-1, 1] scale), clamped back to [-1, 1]."""
    from ..data.render import gaussian_blur

    if level <= 0:
        return images.clone()
    if kind == "blur":
        sigma = torch.full((len(images),), float(level))
        return gaussian_blur(images.float(), sigma).clamp(-1, 1)
    if kind == "noise":
        g = torch.Generator().manual_seed(seed)
        return (images + level * torch.randn(images.shape, generator=g)).clamp(-1, 1)
    raise ValueError(f"unknown corruption {kind!r}: use 'blur' or 'noise'")


def corruption_curve(probe, images: torch.Tensor, reference: torch.Tensor,
                     levels: dict[str, list[float]] | None = None) -> dict[str, list[dict]]:
    """Domain-FID of progressively damaged ``images`` against clean ``reference`` images.

    Both (B, 3, H, W) in [-1, 1]. Returns {kind: [{"level", "fid", "n1", "n2"}, ...]}.
    A useful FID is ~0 at level 0 (same distribution) and grows with the damage.
    """
    levels = levels or {"blur": [0, 0.5, 1.0, 1.5, 2.0, 3.0], "noise": [0, 0.1, 0.2, 0.4, 0.6, 0.8]}
    ref = FeatureStats.of(probe.features(reference))
    out = {}
    for kind, lv in levels.items():
        out[kind] = []
        for level in lv:
            r = fid(probe.features(corrupt(images, kind, level)), ref)
            out[kind].append({"level": float(level), "fid": r.value, "n1": r.n1, "n2": r.n2})
    return out


def plot_corruption_curve(curve: dict[str, list[dict]], path, title: str | None = None) -> None:
    """Save the corruption curve as a PNG: one panel per kind of damage."""
    from matplotlib.figure import Figure  # no pyplot: a lecture's inline backend stays as it is

    units = {"blur": "Gaussian blur sigma (pixels)", "noise": "noise std ([-1, 1] scale)"}
    fig = Figure(figsize=(4.5 * len(curve), 3.6))
    axes = fig.subplots(1, len(curve), squeeze=False)
    for ax, (kind, points) in zip(axes[0], curve.items()):
        ax.plot([p["level"] for p in points], [p["fid"] for p in points], "o-")
        ax.set_xlabel(units.get(kind, kind))
        ax.set_ylabel(NAME)
        n1, n2 = points[0]["n1"], points[0]["n2"]
        ax.set_title(f"{kind}: N = {n1} vs {n2}")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
