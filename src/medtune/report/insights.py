"""Insights as data: which statement applies and with which numbers; the wording tables turn them into sentences.

Nothing here knows about particular versions: every statement is chosen by comparing the numbers, and a
winner is only named when the difference passes the rule of stats.py (docs/REPORT.md). Ties name every
tied version, or none when all of them tie.
"""

from __future__ import annotations

from typing import Any

from medtune.report.analysis import tied_best
from medtune.report.schema import Comparison, Insight, Summary
from medtune.report.stats import DEFAULT_EFFECT, LOSS_EFFECT, MinimumEffect


def insights(summary: Summary) -> list[Insight]:
    found: list[dict[str, Any]] = []
    found += _convergence(summary)
    found += _final_eval(summary)
    found += _stability(summary)
    found += _overfitting(summary)
    found += _clipping(summary)
    found += _schedule(summary)
    return [Insight(**item) for item in found]


def verdict(comparison: Comparison) -> dict[str, Any]:
    """The rule's judgement of a comparison as a wording key plus its number."""
    if comparison.test == "welch":
        return {"verdict": "welch_yes" if comparison.significant else "welch_no", "p": comparison.p_value}
    if comparison.test == "min_effect":
        return {
            "verdict": "min_effect_yes" if comparison.significant else "min_effect_no",
            "threshold": comparison.threshold,
        }
    return {"verdict": "unknown"}


def _change(comparison: Comparison) -> dict[str, Any]:
    return {"rel": comparison.rel, "diff": comparison.diff}


def _statement(
    comparison: Comparison, reference: float | None, effect: MinimumEffect, kinds: tuple[str, str, str]
) -> str:
    """Which of `kinds` (lower, higher, tie) states a difference: lower or higher when it is significant; a tie
    ("alike") only when the values are also close, within the minimum effect; otherwise lower or higher with
    `_not_significant`, which says how they differ and that the test cannot tell."""
    lower, higher, tie = kinds
    direction = lower if comparison.diff is not None and comparison.diff < 0 else higher
    if comparison.significant:
        return direction
    if comparison.diff is not None and reference is not None and abs(comparison.diff) <= effect.threshold(reference):
        return tie
    return f"{direction}_not_significant"


def _convergence(summary: Summary) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    convergence, baseline = summary.advantages.convergence, summary.baseline
    for name, pair in convergence.pairs.items():
        if pair is None or pair.diff is None:
            found.append({"kind": "convergence_none", "version": name, "baseline": baseline})
            continue
        kind = _statement(
            pair,
            pair.baseline_window_loss,
            LOSS_EFFECT,
            ("convergence_lower", "convergence_higher", "convergence_tie"),
        )
        found.append(
            {
                "kind": kind,
                "version": name,
                "baseline": baseline,
                "start": pair.start,
                "end": pair.end,
                "share": pair.share_higher if kind.startswith("convergence_higher") else pair.share_lower,
                "loss": pair.window_loss,
                "base_loss": pair.baseline_window_loss,
                **_change(pair),
                **verdict(pair),
            }
        )
        found += _crossing(summary, name, pair)
    window = convergence.window
    if window is not None and len(summary.versions) > 1:
        if convergence.best:
            found.append({"kind": "fastest", "versions": convergence.best, "start": window.start, "end": window.end})
        else:
            found.append({"kind": "fastest_none", "start": window.start, "end": window.end})
    reached = {name: step for name, step in convergence.steps_to_target.items() if step is not None}
    if convergence.target_loss is not None and len(reached) > 1:
        found.append(
            {
                "kind": "target",
                "target": convergence.target_loss,
                "reached": [f"{name} {step}" for name, step in reached.items()],
            }
        )
    return found


def _crossing(summary: Summary, name: str, pair: Comparison) -> list[dict[str, Any]]:
    """A version whose training loss after the warmup differs from the baseline's one way but ends the other way,
    both worth stating: its window loss alone would hide that the curves cross."""
    final_train, baseline = summary.advantages.final_train_loss, summary.baseline
    final = final_train.vs_baseline.get(name)
    if not (pair.significant and final and final.significant and final.diff and pair.diff):
        return []
    if (final.diff > 0) == (pair.diff > 0):  # ends the way it went: the convergence sentence says it all
        return []
    return [
        {
            "kind": "crossing_ends_higher" if final.diff > 0 else "crossing_ends_lower",
            "version": name,
            "baseline": baseline,
            "loss": final_train.values[name].mean,
            "base_loss": final_train.values[baseline].mean,
            **_change(final),
            **verdict(final),
        }
    ]


def _final_eval(summary: Summary) -> list[dict[str, Any]]:
    final_eval, baseline = summary.advantages.final_eval_loss, summary.baseline
    found = []
    for name, entry in final_eval.vs_baseline.items():
        if entry.diff is None:
            continue
        kind = _statement(
            entry,
            final_eval.values[baseline].mean,
            LOSS_EFFECT,
            ("final_eval_lower", "final_eval_higher", "final_eval_tie"),
        )
        found.append(
            {
                "kind": kind,
                "version": name,
                "baseline": baseline,
                "loss": final_eval.values[name].mean,
                "base_loss": final_eval.values[baseline].mean,
                **_change(entry),
                **verdict(entry),
            }
        )
    return found


def _stability(summary: Summary) -> list[dict[str, Any]]:
    cv = summary.grad_norm.cv_after_warmup.values
    found = []
    for pair in summary.grad_norm.cv_pairs:
        if pair.diff is None:
            continue
        kind = _statement(
            pair, cv[pair.reference].mean, DEFAULT_EFFECT, ("stability_narrows", "stability_widens", "stability_tie")
        )
        found.append(
            {
                "kind": kind,
                "reference": pair.reference,
                "other": pair.other,
                "value": cv[pair.other].mean,
                "base_value": cv[pair.reference].mean,
                **_change(pair),
                **verdict(pair),
            }
        )
    return found


def _overfitting(summary: Summary) -> list[dict[str, Any]]:
    gaps = summary.advantages.overfit_gap
    means = {name: value.mean for name, value in gaps.values.items() if value.mean is not None}
    if not means:
        return []
    if max(means.values()) <= 0:
        return [{"kind": "overfit_none"}]
    largest = tied_best(gaps.per_run, LOSS_EFFECT, lower=False)
    if not largest:
        return (
            [{"kind": "overfit_tie", "gap_low": min(means.values()), "gap_high": max(means.values())}]
            if len(means) > 1
            else []
        )
    return [{"kind": "overfit", "gaps": {name: means[name] for name in largest}}]


def _clipping(summary: Summary) -> list[dict[str, Any]]:
    clipped = summary.grad_norm.clipped_fraction
    means = {name: value.mean for name, value in clipped.values.items() if value.mean is not None}
    if not means:
        return []
    if max(means.values()) == 0:
        return [{"kind": "clipping_none"}]
    if clipped.most:
        return [
            {"kind": "clipping", "versions": clipped.most, "fractions": {name: means[name] for name in clipped.most}}
        ]
    return (
        [{"kind": "clipping_tie", "fraction_low": min(means.values()), "fraction_high": max(means.values())}]
        if len(means) > 1
        else []
    )


def _schedule(summary: Summary) -> list[dict[str, Any]]:
    checks = summary.learning_rate.schedule_check
    checked = [
        (version, run, check) for version, runs in checks.items() for run, check in runs.items() if check.checked
    ]
    bad = [
        {
            "kind": "schedule_bad",
            "version": version,
            "run": run,
            "schedule": check.schedule,
            "deviation": check.max_deviation,
            "step": check.max_deviation_step,
        }
        for version, run, check in checked
        if not check.matches
    ]
    if bad or not checked:
        return bad
    return [
        {
            "kind": "schedule_ok",
            "count": len(checked),
            "deviation": max(check.max_deviation or 0.0 for _, _, check in checked),
        }
    ]
