"""The alpha-beta cost model of all-reduce: where the time goes from 2 to 1,000 GPUs.

Sending one message of ``S`` bytes costs ``alpha + S * beta``: a fixed latency ``alpha``
(seconds per message: software, the link's round trip) plus the bytes over the link's
bandwidth (``beta`` = seconds per byte = 1 / bandwidth). Thakur, Rabenseifner & Gropp,
"Optimization of collective communication operations in MPICH", IJHPCA 19(1), 2005, eq. (1)
and section 4.4 (all-reduce); Patarasuk & Yuan 2009 (J. Parallel Distrib. Comput. 69(2)) for the
ring's bandwidth optimality.

For an all-reduce of ``S`` bytes over ``N`` ranks (the reduction's arithmetic is left out):

  ring (reduce-scatter + all-gather, ``allreduce.py``)
      T_ring = 2 (N-1) alpha + 2 (N-1)/N * S * beta
      latency grows linearly in N, bandwidth is ~2 S beta whatever N;
  tree (binomial-tree reduce to a root, then broadcast back; Thakur et al. sec. 4.4)
      T_tree = 2 ceil(log2 N) (alpha + S beta)
      latency grows like log N, but every hop carries the whole message.

So small messages (latency-bound) want trees, large ones (bandwidth-bound) want rings; the ring's
two terms are equal at ``S* = N alpha / beta``. That is why DDP packs gradients into buckets
(25 MB by default): a bucket well above ``S*`` keeps the all-reduce bandwidth-bound. (NCCL's
double binary trees pipeline the message in chunks and get a bandwidth term near the ring's
with log N latency; the unpipelined tree here is the textbook bound.)

nccl-tests report **bus bandwidth** ``busbw = algbw * 2 (N-1)/N`` with ``algbw = S / t``: the
rate each link actually carries in a ring, comparable across N (nccl-tests, doc/PERFORMANCE.md).
"""
from __future__ import annotations

import math

import numpy as np


def ring_time(n: int, nbytes: float, alpha: float, beta: float) -> float:
    """Seconds for a ring all-reduce of ``nbytes`` over ``n`` ranks (0 for one rank)."""
    _check(n, nbytes, alpha, beta)
    return 2 * (n - 1) * alpha + 2 * (n - 1) / n * nbytes * beta


def tree_time(n: int, nbytes: float, alpha: float, beta: float) -> float:
    """Seconds for a binomial-tree reduce + broadcast of ``nbytes`` over ``n`` ranks."""
    _check(n, nbytes, alpha, beta)
    return 2 * math.ceil(math.log2(n)) * (alpha + nbytes * beta) if n > 1 else 0.0


def ring_terms(n: int, nbytes: float, alpha: float, beta: float) -> tuple[float, float]:
    """(latency term, bandwidth term) of ``ring_time``: which one dominates."""
    _check(n, nbytes, alpha, beta)
    return 2 * (n - 1) * alpha, 2 * (n - 1) / n * nbytes * beta


def crossover_bytes(n: int, alpha: float, beta: float) -> float:
    """Message size at which the ring's bandwidth term equals its latency term: ``N alpha / beta``.

    Buckets much larger than this are bandwidth-bound (the latency is amortised).
    """
    _check(n, 0.0, alpha, beta)
    return n * alpha / beta


def bus_bandwidth(n: int, nbytes: float, seconds: float) -> float:
    """nccl-tests' bus bandwidth (bytes/s): ``S / t * 2 (N-1)/N``."""
    _check(n, nbytes, 0.0, 0.0)
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return nbytes / seconds * 2 * (n - 1) / n


def fit_alpha_beta(n: np.ndarray, nbytes: np.ndarray, seconds: np.ndarray) -> dict:
    """Least-squares fit of ``t = a * 2(N-1) + b * 2(N-1)/N * S`` to measured ring times.

    Args:
        n, nbytes, seconds: (M,) arrays, one entry per measurement.
    Returns:
        {"alpha": seconds, "beta": seconds per byte, "rel_rmse": the model's typical relative
        error, "r2_log": R^2 of log t}. Each point is weighted by 1/t (a fit of the relative
        error), so 4-byte and 16-MB messages, whose times span orders of magnitude, count alike.
    """
    n, s, t = (np.asarray(x, dtype=float) for x in (n, nbytes, seconds))
    if not (n.shape == s.shape == t.shape) or n.ndim != 1 or len(n) < 2:
        raise ValueError(f"need matching 1-D arrays of >= 2 points, got {n.shape} {s.shape} {t.shape}")
    if (t <= 0).any() or (n < 2).any():
        raise ValueError("times must be > 0 and world sizes >= 2")
    design = np.stack([2 * (n - 1), 2 * (n - 1) / n * s], axis=1) / t[:, None]
    target = np.ones_like(t)  # (a x_i + b y_i) / t_i = 1 for a perfect model
    (alpha, beta), *_ = np.linalg.lstsq(design, target, rcond=None)
    pred = design @ np.array([alpha, beta])
    ss_res = float(((target - pred) ** 2).sum())
    log_t, log_p = np.log(t), np.log(np.clip(pred * t, 1e-30, None))
    ss_tot = float(((log_t - log_t.mean()) ** 2).sum())
    return {"alpha": float(alpha), "beta": float(beta),
            "rel_rmse": math.sqrt(ss_res / len(t)),  # typical relative error of the model
            "r2_log": 1 - float(((log_t - log_p) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan}


def extrapolate(gpus: list[int], sizes: list[float], alpha: float, beta: float) -> list[dict]:
    """Rows of ring vs tree time and the ring's two terms for each (N, S)."""
    rows = []
    for n in gpus:
        for s in sizes:
            lat, bw = ring_terms(n, s, alpha, beta)
            rows.append({"gpus": n, "bytes": s, "ring_s": lat + bw, "tree_s": tree_time(n, s, alpha, beta),
                         "ring_latency_s": lat, "ring_bandwidth_s": bw,
                         "faster": "ring" if lat + bw <= tree_time(n, s, alpha, beta) else "tree",
                         "crossover_bytes": crossover_bytes(n, alpha, beta)})
    return rows


def _check(n: int, nbytes: float, alpha: float, beta: float) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of ranks must be a positive int, got {n!r}")
    if nbytes < 0 or alpha < 0 or beta < 0:
        raise ValueError(f"bytes, alpha and beta must be >= 0, got {nbytes}, {alpha}, {beta}")
