"""Insights as data: which statement applies and with which numbers; the wording tables turn them into sentences.

Nothing here knows about particular versions: every statement is chosen by comparing the numbers.
"""

from __future__ import annotations

from typing import Any


def insights(summary: dict[str, Any]) -> list[dict[str, Any]]:
    baseline = summary["baseline"]
    matrix = summary["advantages"]
    found: list[dict[str, Any]] = []
    for name, entry in matrix["convergence"].items():
        if name != "best" and entry and entry["diff"] is not None:
            found.append({"kind": "convergence", "version": name, "baseline": baseline, "step": entry["step"],
                          "direction": "lower" if entry["diff"] < 0 else "higher", "rel": entry["rel"], **verdict(entry)})
    if len(summary["versions"]) > 1:
        found.append({"kind": "fastest", "version": matrix["convergence"]["best"]})
    final_eval = matrix["final_eval_loss"]
    for name, entry in final_eval["vs_baseline"].items():
        if entry["diff"] is not None:
            found.append({"kind": "final_eval", "version": name, "baseline": baseline, "rel": entry["rel"],
                          "loss": final_eval["values"][name]["mean"], "base_loss": final_eval["values"][baseline]["mean"], **verdict(entry)})
    cv = summary["grad_norm"]["cv_after_warmup"]["values"]
    for pair in summary["grad_norm"]["cv_pairs"]:
        if pair["rel"] is not None:
            found.append({"kind": "stability", "reference": pair["reference"], "other": pair["other"],
                          "direction": "narrows" if pair["diff"] < 0 else "widens", "change": abs(pair["rel"]),
                          "value": cv[pair["other"]]["mean"], "base_value": cv[pair["reference"]]["mean"], **verdict(pair)})
    found.extend(_overfitting(matrix))
    found.extend(_clipping(summary["grad_norm"]["clipped_fraction"]["values"]))
    found.extend(_schedule(summary["learning_rate"]["schedule_check"]))
    return found


def verdict(comparison: dict[str, Any]) -> dict[str, Any]:
    """The significance of a comparison as a wording key plus its number."""
    test, significant = comparison.get("test"), comparison.get("significant")
    if test == "welch":
        return {"verdict": "welch_yes" if significant else "welch_no", "p": comparison["p_value"]}
    if test == "noise":
        return {"verdict": "noise_yes" if significant else "noise_no", "threshold": comparison["threshold"]}
    return {"verdict": "unknown"}


def _overfitting(matrix: dict[str, Any]) -> list[dict[str, Any]]:
    gaps = {name: value["mean"] for name, value in matrix["overfit_gap"]["values"].items() if value["mean"] is not None}
    if not gaps:
        return []
    worst = max(gaps, key=gaps.get)
    return [{"kind": "overfit", "version": worst, "gap": gaps[worst], "ratio": matrix["overfit_ratio"]["values"][worst]["mean"]}]


def _clipping(fractions: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    known = {name: value["mean"] for name, value in fractions.items() if value["mean"]}
    if not known:
        return []
    most = max(known, key=known.get)
    return [{"kind": "clipping", "version": most, "fraction": known[most]}]


def _schedule(checks: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    checked = [(version, run, check) for version, runs in checks.items() for run, check in runs.items() if check["checked"]]
    bad = [
        {"kind": "schedule_bad", "version": version, "run": run, "schedule": check["schedule"],
         "deviation": check["max_deviation"], "step": check["max_deviation_step"]}
        for version, run, check in checked
        if not check["matches"]
    ]
    if bad or not checked:
        return bad
    return [{"kind": "schedule_ok", "count": len(checked), "deviation": max(check["max_deviation"] for _, _, check in checked)}]
