"""Trend test over a series: is it rising, flat or falling, and how sure are we? Pure; no I/O.

The Mann-Kendall test (a rank test, so robust to outliers and to the noise of RL rewards) with the
tie-corrected variance and the continuity-corrected normal approximation, plus Sen's slope (the
median of all pairwise slopes) as the size of the change. "Rising" needs p < alpha, not two points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RISING, FLAT, FALLING, TOO_SHORT = "rising", "flat", "falling", "too short"
MIN_POINTS = 4


@dataclass(frozen=True)
class Trend:
    direction: str          # rising | flat | falling | too short
    p_value: float | None   # two-sided; None when too short
    slope: float | None     # Sen's slope per unit of x
    n: int
    s: int = 0              # Mann-Kendall S
    z: float = 0.0

    @property
    def is_rising(self) -> bool:
        return self.direction == RISING

    def describe(self) -> str:
        if self.direction == TOO_SHORT:
            return f"too short to judge ({self.n} points, need {MIN_POINTS})"
        return f"{self.direction} (Mann-Kendall p={self.p_value:.3g}, Sen slope {self.slope:+.3g}/step, n={self.n})"


def mann_kendall(values: Sequence[float], xs: Sequence[float] | None = None, alpha: float = 0.05) -> Trend:
    """Trend of `values` (ordered by `xs`, default 0..n-1). NaN / None values are dropped."""
    y = np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
    x = np.arange(len(y), dtype=float) if xs is None else np.asarray(xs, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"xs has {len(x)} points but values has {len(y)}")
    keep = np.isfinite(y) & np.isfinite(x)
    x, y = x[keep], y[keep]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    n = len(y)
    if n < MIN_POINTS:
        return Trend(TOO_SHORT, None, None, n)
    i, j = np.triu_indices(n, k=1)
    dy, dx = y[j] - y[i], x[j] - x[i]
    s = int(np.sign(dy).sum())
    _, counts = np.unique(y, return_counts=True)
    ties = counts[counts > 1].astype(float)
    var = (n * (n - 1) * (2 * n + 5) - float((ties * (ties - 1) * (2 * ties + 5)).sum())) / 18.0
    if var <= 0:
        z = 0.0
    elif s > 0:
        z = (s - 1) / math.sqrt(var)
    elif s < 0:
        z = (s + 1) / math.sqrt(var)
    else:
        z = 0.0
    p = math.erfc(abs(z) / math.sqrt(2.0))
    ok = dx != 0
    slope = float(np.median(dy[ok] / dx[ok])) if ok.any() else 0.0
    if p < alpha:
        direction = RISING if s > 0 else FALLING
    else:
        direction = FLAT
    return Trend(direction, p, slope, n, s, z)
