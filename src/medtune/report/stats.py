"""Statistics across the runs (seeds) of a version: mean with a t-based 95% CI, Welch's test, a pooled noise estimate.

A difference is called significant by Welch's t-test when both versions have several runs; when one has a
single run, by comparing it with the run-to-run noise pooled over the versions that have several runs
(|difference| > 1.96 * sd * sqrt(1/n_a + 1/n_b)); with no such version nothing can be said.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95
NOISE_Z = float(stats.norm.ppf(1 - ALPHA / 2))


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample sd, n and the half-width of the 95% t interval (None with a single run)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0, "ci95": None}
    if n == 1:
        return {"mean": float(array[0]), "sd": None, "n": 1, "ci95": None}
    sd = float(array.std(ddof=1))
    return {"mean": float(array.mean()), "sd": sd, "n": n, "ci95": float(stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n))}


def pooled_sd(groups: Sequence[Sequence[float]]) -> float | None:
    """Run-to-run sd pooled over the groups with at least two runs: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))."""
    usable = [np.asarray(group, dtype=float) for group in groups if len(group) >= 2]
    dof = sum(len(group) - 1 for group in usable)
    if not dof:
        return None
    return math.sqrt(sum(float(group.var(ddof=1)) * (len(group) - 1) for group in usable) / dof)


def compare(baseline: Sequence[float], other: Sequence[float], noise_sd: float | None) -> dict[str, object]:
    """How `other` differs from `baseline`: difference and relative gap of the means, p-value and significance."""
    base, values = np.asarray(baseline, dtype=float), np.asarray(other, dtype=float)
    if not len(base) or not len(values):
        return {"diff": None, "rel": None, "p_value": None, "test": None, "significant": None}
    base_mean, mean = float(base.mean()), float(values.mean())
    diff = mean - base_mean
    result: dict[str, object] = {"diff": diff, "rel": diff / base_mean if base_mean else None, "p_value": None, "test": None, "significant": None}
    if len(base) >= 2 and len(values) >= 2:
        if _constant(base) and _constant(values):  # no spread to test against (e.g. the same LR in every seed)
            p_value = 1.0 if np.isclose(mean, base_mean, rtol=1e-9, atol=0) else 0.0
        else:
            p_value = float(stats.ttest_ind(values, base, equal_var=False).pvalue)
        result.update(p_value=p_value, test="welch", significant=p_value < ALPHA)
    elif noise_sd is not None:
        threshold = NOISE_Z * noise_sd * math.sqrt(1 / len(base) + 1 / len(values))
        result.update(test="noise", threshold=threshold, significant=abs(diff) > threshold)
    return result


def _constant(values: np.ndarray) -> bool:
    return bool(np.allclose(values, values[0], rtol=1e-9, atol=0))
