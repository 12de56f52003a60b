"""How sure is an accuracy? Intervals for one score, and tests for a difference between two.

    wilson(k, n)              95% interval of a proportion; honest even at n = 20 or k = 0
    bootstrap_ci(x)           95% interval of a mean by resampling items (any per-item score)
    paired_difference(a, b)   two models on the same items: bootstrap the per-item difference,
                              so the noise shared by both (hard items) cancels
    unpaired_difference(...)  different item sets: a two-proportion (Newcombe) interval

A difference is "larger than the noise" when its 95% interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (Wilson 1927)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(
    values: Sequence[float], resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    x = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # chunks keep memory at 1000 x n
        idx = rng.integers(0, len(x), size=(min(1000, resamples - start), len(x)))
        means[start : start + len(idx)] = x[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_difference(
    a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """mean(b) - mean(a) over the same items, with a paired bootstrap 95% interval."""
    if len(a) != len(b) or not len(a):
        raise ValueError("a paired comparison needs two equally long, non-empty score lists")
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    lo, hi = bootstrap_ci(d, resamples, seed)
    return {"difference": float(d.mean()), "ci": [lo, hi], "significant": lo > 0 or hi < 0}


def unpaired_difference(k_a: int, n_a: int, k_b: int, n_b: int) -> dict[str, Any]:
    """p_b - p_a for two independent samples: Newcombe's hybrid score interval (method 10),
    built from each side's Wilson interval."""
    pa, pb = k_a / n_a, k_b / n_b
    la, ua = wilson(k_a, n_a)
    lb, ub = wilson(k_b, n_b)
    d = pb - pa
    lo = d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    hi = d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    return {"difference": d, "ci": [lo, hi], "significant": lo > 0 or hi < 0}


def compare_scores(
    a: dict[str, Any], b: dict[str, Any], metric: str, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Compare one task's results of two runs (as in eval.json): paired when they scored the
    same items in the same order, unpaired otherwise."""
    per_item = {"acc": "correct", "acc_norm": "correct_norm"}[metric]
    if a.get("item_ids") and a.get("item_ids") == b.get("item_ids"):
        out = paired_difference(a[per_item], b[per_item], resamples, seed)
        return out | {"test": "paired bootstrap", "items": len(a[per_item])}
    out = unpaired_difference(
        sum(a[per_item]), len(a[per_item]), sum(b[per_item]), len(b[per_item])
    )
    return out | {"test": "two-proportion (different items)", "items": [len(a[per_item]), len(b[per_item])]}  # fmt: skip
