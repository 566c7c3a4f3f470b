"""Statistics across the runs (seeds) of a version, and the one rule for "a difference worth stating".

The rule (docs/REPORT.md): when both versions have at least two runs, Welch's t-test at α = 0.05; when either
has a single run, there is no spread to test against, so a difference is stated only when it passes a
minimum effect, both relative to the reference and absolute, fixed per kind of quantity. Below that the
versions are tied and no winner is named. A relative change is only given when the reference is clearly
away from zero; otherwise the absolute difference stands alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95
NEAR_ZERO = 0.1
"""A reference is near zero when its magnitude is below this share of the larger magnitude compared."""


@dataclass(frozen=True)
class MinimumEffect:
    """The smallest difference stated with a single run per version: it must pass both bounds."""

    relative: float
    absolute: float

    def threshold(self, reference: float) -> float:
        return max(self.absolute, self.relative * abs(reference))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


LOSS_EFFECT = MinimumEffect(relative=0.01, absolute=0.005)
"""Losses (training, eval, window means): 1% of the reference and 0.005 nats."""
SHARE_EFFECT = MinimumEffect(relative=0.0, absolute=0.05)
"""Shares of steps (e.g. clipped): 5 percentage points."""
DEFAULT_EFFECT = MinimumEffect(relative=0.05, absolute=1e-12)
"""Anything else (grad-norm CV, ratios, LR, augmentation counts): 5% of the reference."""


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample sd, n and the half-width of the 95% t interval (None with a single run)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0, "ci95": None}
    if n == 1:
        return {"mean": float(array[0]), "sd": None, "n": 1, "ci95": None}
    sd = float(array.std(ddof=1))
    return {
        "mean": float(array.mean()),
        "sd": sd,
        "n": n,
        "ci95": float(stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n)),
    }


def pooled_sd(groups: Sequence[Sequence[float]]) -> float | None:
    """Run-to-run sd pooled over the groups with at least two runs: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))."""
    usable = [np.asarray(group, dtype=float) for group in groups if len(group) >= 2]
    dof = sum(len(group) - 1 for group in usable)
    if not dof:
        return None
    return math.sqrt(sum(float(group.var(ddof=1)) * (len(group) - 1) for group in usable) / dof)


def relative_change(reference: float, value: float, floor: float = 0.0) -> float | None:
    """(value - reference) / |reference|, or None where that ratio would be meaningless: a reference near zero
    (below NEAR_ZERO of the larger magnitude, or no larger than `floor`, the smallest difference that counts for the
    quantity), or a value on the other side of zero."""
    scale = max(abs(reference), abs(value))
    if abs(reference) <= floor or abs(reference) < NEAR_ZERO * scale or reference * value < 0:
        return None
    return (value - reference) / abs(reference)


def compare(
    baseline: Sequence[float], other: Sequence[float], effect: MinimumEffect, relative: bool = True
) -> dict[str, object]:
    """How `other` differs from `baseline`: difference (and relative change) of the means and whether it is worth
    stating.

    `test` is "welch" (p_value set) or "min_effect" (threshold set); `significant` is None only without values.
    `relative=False` for signed quantities (e.g. eval - train gap), whose ratios mean nothing.
    """
    base, values = np.asarray(baseline, dtype=float), np.asarray(other, dtype=float)
    if not len(base) or not len(values):
        return {"diff": None, "rel": None, "p_value": None, "threshold": None, "test": None, "significant": None}
    base_mean, mean = float(base.mean()), float(values.mean())
    diff = mean - base_mean
    result: dict[str, object] = {
        "diff": diff,
        "rel": relative_change(base_mean, mean, effect.absolute) if relative else None,
        "p_value": None,
        "threshold": None,
    }
    if len(base) >= 2 and len(values) >= 2:
        if _constant(base) and _constant(values):  # no spread to test against (e.g. the same LR in every seed)
            p_value = 1.0 if np.isclose(mean, base_mean, rtol=1e-9, atol=0) else 0.0
        elif _constant(base) or _constant(values):
            # Welch's test with one group's variance zero is the one-sample test of the other against its mean;
            # asking scipy for the constant group's variance only loses precision (and warns about it)
            spread, fixed = (values, base_mean) if _constant(base) else (base, mean)
            p_value = float(stats.ttest_1samp(spread, fixed).pvalue)
        else:
            p_value = float(stats.ttest_ind(values, base, equal_var=False).pvalue)
        result.update(p_value=p_value, test="welch", significant=p_value < ALPHA)
    else:
        threshold = effect.threshold(base_mean)
        result.update(threshold=threshold, test="min_effect", significant=abs(diff) > threshold)
    return result


def _constant(values: np.ndarray) -> bool:
    return bool(np.allclose(values, values[0], rtol=1e-9, atol=0))
