"""report/stats.py's comparison of a version with the baseline over seeds: Welch's test, and its limit when one
side has no spread."""

from __future__ import annotations

import warnings

import pytest
from scipy import stats

from medtune.report.document import p_value
from medtune.report.stats import MinimumEffect, compare

EFFECT = MinimumEffect(relative=0.01, absolute=0.001)


def test_seeds_with_spread_on_both_sides_take_welchs_test():
    base, other = [1.30, 1.32, 1.31], [1.25, 1.27, 1.24]
    result = compare(base, other, EFFECT)
    assert result["test"] == "welch"
    assert result["p_value"] == pytest.approx(stats.ttest_ind(other, base, equal_var=False).pvalue)


@pytest.mark.parametrize("constant_side", ["baseline", "other"])
def test_a_side_without_spread_is_a_one_sample_test_and_warns_nothing(constant_side):
    """A constant side (the same value in every seed, e.g. a learning rate) has variance zero: Welch's test is then
    the one-sample test of the other side. scipy's own variance of the constant side warns of precision loss
    (printed in the middle of `medtune report`)."""
    constant, spread = [0.3, 0.3, 0.3], [0.32, 0.35, 0.31]
    base, other = (constant, spread) if constant_side == "baseline" else (spread, constant)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compare(base, other, EFFECT)
    fixed = sum(constant) / 3
    assert result["p_value"] == pytest.approx(stats.ttest_1samp(spread, fixed).pvalue)
    assert result["test"] == "welch" and result["significant"] == (result["p_value"] < 0.05)


def test_both_sides_constant_differ_only_if_their_values_do():
    assert compare([2.0, 2.0], [2.0, 2.0], EFFECT)["p_value"] == 1.0
    assert compare([2.0, 2.0], [2.5, 2.5], EFFECT)["p_value"] == 0.0


def test_no_relative_change_of_a_reference_below_the_absolute_minimum_effect_or_across_zero():
    losses = MinimumEffect(relative=0.01, absolute=0.005)
    assert compare([0.0001], [0.00005], losses)["rel"] is None  # -50% of a loss that is zero for all purposes
    assert compare([0.0665], [-0.25], losses)["rel"] is None  # -476% across zero
    assert compare([2.0], [1.5], losses)["rel"] == pytest.approx(-0.25)


@pytest.mark.parametrize(
    ("p", "text"), [(0.0, "p<1e-16"), (3e-20, "p<1e-16"), (3.8e-6, "p=3.8e-06"), (0.0123, "p=0.012"), (1.0, "p=1.000")]
)
def test_p_values_below_float_precision_are_given_as_a_bound(p, text):
    """Two constant groups that differ have p = 0 exactly: `p=0.0e+00` would claim a precision no test has."""
    assert p_value(p) == text
