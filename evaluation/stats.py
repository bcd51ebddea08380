"""Interval estimates for approval rates: the weekly report's confidence intervals and the
canary judge's comparison of a canary with its champion."""

from __future__ import annotations

import math
from statistics import NormalDist

Z95 = 1.959963984540054  # two-sided 95%


def z_for(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (0.95 -> 1.96)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion (95% by default); None when n == 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_difference(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float] | None:
    """``p1 - p2`` with its interval by Newcombe's hybrid score method (1998, method 10), which
    keeps its coverage for the small counts and extreme rates a canary sees; None when a
    count is zero."""
    a, b = wilson_interval(k1, n1, z), wilson_interval(k2, n2, z)
    if a is None or b is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    low = d - math.sqrt((p1 - a[0]) ** 2 + (b[1] - p2) ** 2)
    high = d + math.sqrt((a[1] - p1) ** 2 + (p2 - b[0]) ** 2)
    return d, max(-1.0, low), min(1.0, high)
