"""95% intervals for the course's measured claims: over seeds, over prompts, over pairs.

Which interval fits which number:
  * a mean over a few independent training seeds -> Student's t interval (``t_interval``);
  * a proportion of n yes/no outcomes (prompt accuracy, win rate, divergence rate) -> the
    Wilson score interval (``wilson_interval``; Wilson 1927), which stays inside [0, 1] and
    behaves at 0/n and n/n, where the textbook normal interval collapses to a point;
  * anything else (a ratio of means, a median) -> a percentile bootstrap (``bootstrap_interval``;
    Efron & Tibshirani 1993, ch. 13), seeded so the page is reproducible.

Each is tested equal to its scipy oracle (tests/test_stats.py). An interval that cannot be
computed (one seed: no spread to estimate) is ``(nan, nan)``: the verdict rules treat it as
inconclusive rather than pretending to a precision we do not have.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps

NAN_INTERVAL = (math.nan, math.nan)


def mean(values: Sequence[float]) -> float:
    return float(np.mean(np.asarray(values, dtype=float)))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student's t interval for the mean of independent values (e.g. one per seed)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2 or not np.isfinite(x).all():
        return NAN_INTERVAL
    m, se = x.mean(), x.std(ddof=1) / math.sqrt(x.size)
    if se == 0:
        return (float(m), float(m))
    half = sps.t.ppf(0.5 + level / 2, df=x.size - 1) * se
    return (float(m - half), float(m + half))


def wilson_interval(k: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of the proportion k / n (Wilson 1927); z = 1.96 for 95%.

    k may be fractional (a tie counted as half a win); n = 0 gives (nan, nan).
    """
    if n <= 0:
        return NAN_INTERVAL
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k <= 0 else max(0.0, centre - half)  # exact at the ends (not 1e-17 of rounding)
    hi = 1.0 if k >= n else min(1.0, centre + half)
    return (lo, hi)


def bootstrap_interval(samples: Sequence[Sequence[float]], statistic: Callable[..., float],
                       level: float = 0.95, resamples: int = 4000, seed: int = 0,
                       paired: bool = False) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)``.

    samples: one 1-D sequence per group (e.g. the per-seed values of two arms);
    ``paired=True`` resamples the same indices in every group (the groups share seeds).
    """
    groups = [np.asarray(s, dtype=float) for s in samples]
    if any(g.size < 2 for g in groups):
        return NAN_INTERVAL
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for i in range(resamples):
        if paired:
            idx = rng.integers(0, groups[0].size, groups[0].size)
            values[i] = statistic(*(g[idx] for g in groups))
        else:
            values[i] = statistic(*(g[rng.integers(0, g.size, g.size)] for g in groups))
    values = values[np.isfinite(values)]
    if values.size == 0:
        return NAN_INTERVAL
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def ratio_of_means(a: Sequence[float], b: Sequence[float]) -> float:
    """mean(a) / mean(b): the statistic of a speed-up (steps of the slow arm over the fast)."""
    mb = float(np.mean(b))
    return float(np.mean(a)) / mb if mb != 0 else math.nan


def decide(lo: float, hi: float, null: float, direction: str = "above",
           equivalence: float | None = None) -> tuple[str, str]:
    """The verdict of an interval, by a rule fixed before the run. Returns (verdict, reason).

    direction 'above': the claim is that the quantity exceeds ``null`` (e.g. a speed-up ratio
    above 1); 'below': that it is smaller. reproduced = the whole interval on the claimed side;
    not reproduced = the whole interval on the other side of ``null``, or (with ``equivalence``)
    inside null +- equivalence (no effect worth the name); otherwise inconclusive.
    """
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', got {direction!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive", "no interval (too few seeds or samples to estimate the spread)"
    span = f"[{lo:.3g}, {hi:.3g}]"
    claimed = lo > null if direction == "above" else hi < null
    opposite = hi < null if direction == "above" else lo > null
    if claimed:
        return "reproduced", f"the 95% interval {span} lies {direction} {null:g}"
    if opposite:
        return "not reproduced", f"the 95% interval {span} lies on the wrong side of {null:g}"
    if equivalence is not None and null - equivalence <= lo and hi <= null + equivalence:
        return "not reproduced", (f"the 95% interval {span} lies within {null:g} +- "
                                  f"{equivalence:g}: no effect of that size")
    return "inconclusive", f"the 95% interval {span} contains {null:g}"


SIZES = ("consistent", "smaller", "larger")
CONSTRAINTS = ("held", "violated", "inconclusive")


def compare_size(lo: float, hi: float, published: float) -> tuple[str, str]:
    """How a measured effect's size stands against a published one. Returns (verdict, reason).

    'consistent': the 95% interval contains the published value; 'smaller' / 'larger': the whole
    interval lies below / above it. The direction of an effect and its size are separate
    questions: a 1.4x speed-up [1.27, 1.58] reproduces "faster" and is smaller than 3.4x.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "consistent", "no interval: the size cannot be compared (too few seeds or samples)"
    span = f"[{lo:.3g}, {hi:.3g}]"
    if hi < published:
        return "smaller", f"the 95% interval {span} lies below the published {published:.3g}"
    if lo > published:
        return "larger", f"the 95% interval {span} lies above the published {published:.3g}"
    return "consistent", f"the 95% interval {span} contains the published {published:.3g}"


def check_constraint(lo: float, hi: float, limit: float, direction: str = "below") -> tuple[str, str]:
    """A side constraint on a paired difference (an accuracy drop at most 0.05, a weight gap
    below 1e-5). Returns (verdict, reason): 'held' when the whole 95% interval is on the
    allowed side of ``limit`` ('below' or 'above' it), 'violated' when it is wholly on the
    other side, otherwise 'inconclusive' - never a point value compared with the limit.
    """
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', got {direction!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive", "no interval (too few seeds or samples to estimate the spread)"
    span = f"[{lo:.3g}, {hi:.3g}]"
    inside = hi < limit if direction == "below" else lo > limit
    outside = lo > limit if direction == "below" else hi < limit
    if inside:
        return "held", f"the 95% interval {span} lies {direction} {limit:g}"
    if outside:
        return "violated", f"the 95% interval {span} lies beyond {limit:g}"
    return "inconclusive", f"the 95% interval {span} contains {limit:g}"
