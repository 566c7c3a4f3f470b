"""Every number of the comparison report, computed from the runs; rendering only formats what is here.

Each quantity is first computed per run, then summarised per version (mean, 95% CI, n) and compared with
the baseline version (relative gap, Welch's p or the pooled noise). The result is plain JSON data: it is
written as summary.json and is what the Markdown/HTML documents are made from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medtune.report.runs import Run, flatten, numeric_leaves
from medtune.report.schedule import check_schedule
from medtune.report.stats import (
    ALPHA,
    CONFIDENCE,
    NOISE_Z,
    compare,
    describe,
    pooled_sd,
)

IGNORED_CONFIG_KEYS = {"run_name", "output_dir", "seed", "logging_dir"}
"""Config keys (last dotted part) that differ between runs without making them different experiments."""
PHASES = ("warmup", "early", "late")
DEFAULT_PHASE_BOUNDS = (0.1, 0.5)
LR_TOLERANCE = 0.01
"""Largest accepted |logged - expected| LR, as a fraction of the peak LR."""
AUGMENT_COUNTS = ("samples", "masked_samples", "terms_masked")


@dataclass
class Version:
    name: str
    runs: list[Run]


def analyse(versions: list[Version], steps: Sequence[int] | None, phase_bounds: Sequence[float]) -> dict[str, Any]:
    """The report's data. `versions[0]` is the baseline; `steps=None` picks four evenly spaced steps."""
    chosen_steps = list(steps) if steps else default_steps(versions)
    summary: dict[str, Any] = {
        "baseline": versions[0].name,
        "confidence": CONFIDENCE,
        "alpha": ALPHA,
        "noise_z": NOISE_Z,
        "versions": [_version_facts(version) for version in versions],
        "random_weights": _random_weights(versions),
        "config_diff": config_diff(versions),
        "train_loss": metric_table(versions, "loss", chosen_steps),
        "eval_loss": eval_table(versions),
        "grad_norm": grad_stability(versions, phase_bounds),
        "learning_rate": lr_dynamics(versions),
        "noise": noise_estimate(versions),
    }
    summary["advantages"] = advantages(versions, summary)
    return summary


def default_steps(versions: list[Version]) -> list[int]:
    """Quarters of the last step every run has a training loss for."""
    last = min(int(run.series("loss")[0][-1]) for version in versions for run in version.runs)
    return sorted({max(1, round(last * quarter / 4)) for quarter in (1, 2, 3, 4)})


def nearest(run: Run, key: str, step: int) -> tuple[int, float] | None:
    """The value logged at `step`, or at the nearest logged step (the earlier one on a tie)."""
    steps, values = run.series(key)
    if not len(steps):
        return None
    index = int(np.argmin(np.abs(steps - step)))
    return int(steps[index]), float(values[index])


def per_run(version: Version, measure: Callable[[Run], float | None]) -> list[float]:
    return [value for value in (measure(run) for run in version.runs) if value is not None]


def summarised(versions: list[Version], measure: Callable[[Run], float | None]) -> dict[str, Any]:
    """A per-run quantity: per version mean/CI/n and the comparison with the baseline."""
    values = {version.name: per_run(version, measure) for version in versions}
    noise = pooled_sd(list(values.values()))
    baseline = versions[0].name
    return {
        "values": {name: describe(runs) for name, runs in values.items()},
        "vs_baseline": {name: compare(values[baseline], runs, noise) for name, runs in values.items() if name != baseline},
        "noise_sd": noise,
        "per_run": values,
    }


def _version_facts(version: Version) -> dict[str, Any]:
    return {
        "name": version.name,
        "n_runs": len(version.runs),
        "runs": [
            {
                "name": run.name,
                "source": run.source,
                "notes": run.notes,
                "random_weights": run.summary.get("random_weights"),
                "last_step": max(int(record["step"]) for record in run.records),
                "max_steps": run.max_steps(),
            }
            for run in version.runs
        ],
    }


def _random_weights(versions: list[Version]) -> dict[str, Any]:
    runs = [run for version in versions for run in version.runs]
    return {
        "any": any(run.summary.get("random_weights") is True for run in runs),
        "runs": [run.name for run in runs if run.summary.get("random_weights") is True],
        "unknown": [run.name for run in runs if not isinstance(run.summary.get("random_weights"), bool)],
    }


def config_diff(versions: list[Version]) -> list[dict[str, Any]]:
    """Dotted config keys whose values differ between versions (ignoring run names, output folders and seeds)."""
    per_version: dict[str, dict[str, list[Any]]] = {}
    for version in versions:
        flat_configs = [flatten(run.config) for run in version.runs]
        keys = {key for flat in flat_configs for key in flat if key.split(".")[-1] not in IGNORED_CONFIG_KEYS}
        settings: dict[str, list[Any]] = {}
        for key in sorted(keys):
            for flat in flat_configs:
                value = flat.get(key)  # None where a run does not have the key
                if value not in settings.setdefault(key, []):
                    settings[key].append(value)
        per_version[version.name] = settings
    keys = sorted({key for settings in per_version.values() for key in settings})
    rows = []
    for key in keys:
        values = {name: settings.get(key, [None]) for name, settings in per_version.items()}
        if any(value != values[versions[0].name] for value in values.values()):
            rows.append({"key": key, "values": values})
    return rows


def metric_table(versions: list[Version], key: str, steps: Sequence[int]) -> dict[str, Any]:
    """One row per requested step: the metric at the nearest logged step of every run."""
    rows = []
    for step in steps:
        used = {version.name: sorted({hit[0] for run in version.runs if (hit := nearest(run, key, step))}) for version in versions}
        row = summarised(versions, lambda run, step=step: hit[1] if (hit := nearest(run, key, step)) else None)
        rows.append({"step": int(step), "steps_used": used, "exact": all(found == [step] for found in used.values()), **row})
    return {"key": key, "rows": rows}


def eval_table(versions: list[Version]) -> dict[str, Any]:
    """Eval loss at every step any run evaluated at, with the generalisation gap (eval - train loss)."""
    steps = sorted({int(step) for version in versions for run in version.runs for step in run.series("eval_loss")[0]})
    table = metric_table(versions, "eval_loss", steps)
    for row in table["rows"]:
        row["gap"] = summarised(versions, lambda run, step=row["step"]: _generalisation_gap(run, step))
    return table


def _generalisation_gap(run: Run, step: int) -> float | None:
    evaluated, trained = nearest(run, "eval_loss", step), nearest(run, "loss", step)
    return evaluated[1] - trained[1] if evaluated and trained else None


def _total_steps(run: Run) -> int:
    return run.max_steps() or max(int(record["step"]) for record in run.records)


def phase_of(run: Run, steps: np.ndarray, phase_bounds: Sequence[float]) -> np.ndarray:
    """Phase index per step: 0 up to bound[0] x total steps, 1 up to bound[1] x total, 2 after."""
    limits = np.array(phase_bounds) * _total_steps(run)
    return np.searchsorted(limits, steps, side="left")


def grad_stability(versions: list[Version], phase_bounds: Sequence[float]) -> dict[str, Any]:
    def in_phase(phase: int, statistic: Callable[[np.ndarray], float]) -> Callable[[Run], float | None]:
        def measure(run: Run) -> float | None:
            steps, values = run.series("grad_norm")
            chosen = values[phase_of(run, steps, phase_bounds) == phase]
            return float(statistic(chosen)) if len(chosen) else None
        return measure

    def after_warmup(statistic: Callable[[np.ndarray], float]) -> Callable[[Run], float | None]:
        def measure(run: Run) -> float | None:
            steps, values = run.series("grad_norm")
            chosen = values[phase_of(run, steps, phase_bounds) > 0]
            return float(statistic(chosen)) if len(chosen) >= 2 else None
        return measure

    def clipped(run: Run) -> float | None:
        threshold, (_, values) = run.setting("train.max_grad_norm"), run.series("grad_norm")
        return float(np.mean(values > threshold)) if isinstance(threshold, (int, float)) and len(values) else None

    statistics = {"min": np.min, "max": np.max, "median": np.median}
    cv = after_warmup(lambda values: values.std(ddof=1) / values.mean())
    return {
        "phase_bounds": list(phase_bounds),
        "phase_steps": {
            version.name: {run.name: _phase_steps(run, phase_bounds) for run in version.runs} for version in versions
        },
        "phases": {
            phase: {name: summarised(versions, in_phase(index, statistic)) for name, statistic in statistics.items()}
            for index, phase in enumerate(PHASES)
        },
        "sd_after_warmup": summarised(versions, after_warmup(lambda values: values.std(ddof=1))),
        "cv_after_warmup": summarised(versions, cv),
        "clipped_fraction": summarised(versions, clipped),
        "max_grad_norm": {version.name: sorted({str(run.setting("train.max_grad_norm")) for run in version.runs}) for version in versions},
        "cv_pairs": [
            {"reference": first.name, "other": second.name, **compare(per_run(first, cv), per_run(second, cv), None)}
            for index, first in enumerate(versions)
            for second in versions[index + 1 :]
        ],
    }


def _phase_steps(run: Run, phase_bounds: Sequence[float]) -> list[list[float]]:
    """[start, end] step range of each phase, for the table headings."""
    total = _total_steps(run)
    edges = [0.0, *(bound * total for bound in phase_bounds), float(total)]
    return [[edges[index], edges[index + 1]] for index in range(len(PHASES))]


def lr_dynamics(versions: list[Version]) -> dict[str, Any]:
    def at(pick: Callable[[Run, np.ndarray, np.ndarray], int]) -> Callable[[Run], float | None]:
        def measure(run: Run) -> float | None:
            steps, values = run.series("learning_rate")
            return float(values[pick(run, steps, values)]) if len(steps) else None
        return measure

    def peak_step(run: Run) -> float | None:
        steps, values = run.series("learning_rate")
        return float(steps[int(np.argmax(values))]) if len(steps) else None

    return {
        "initial": summarised(versions, at(lambda run, steps, values: 0)),
        "peak": summarised(versions, at(lambda run, steps, values: int(np.argmax(values)))),
        "peak_step": summarised(versions, peak_step),
        "mid": summarised(versions, at(lambda run, steps, values: int(np.argmin(np.abs(steps - _total_steps(run) / 2))))),
        "final": summarised(versions, at(lambda run, steps, values: len(steps) - 1)),
        "tolerance": LR_TOLERANCE,
        "schedule_check": {version.name: {run.name: check_schedule(run, LR_TOLERANCE) for run in version.runs} for version in versions},
    }


def noise_estimate(versions: list[Version]) -> dict[str, Any]:
    """Run-to-run spread of the final losses, from versions with several runs; None where no version has them."""
    repeated = [version.name for version in versions if len(version.runs) >= 2]
    return {
        "single_run_versions": [version.name for version in versions if len(version.runs) == 1],
        "from_versions": repeated,
        "final_train_loss_sd": pooled_sd([per_run(version, _final("loss")) for version in versions]),
        "final_eval_loss_sd": pooled_sd([per_run(version, _final("eval_loss")) for version in versions]),
    }


def _final(key: str) -> Callable[[Run], float | None]:
    def measure(run: Run) -> float | None:
        _, values = run.series(key)
        return float(values[-1]) if len(values) else None
    return measure


def advantages(versions: list[Version], summary: dict[str, Any]) -> dict[str, Any]:
    """The matrix of criteria x versions, with the best version per criterion where lower is better."""
    def overfit_gap(run: Run) -> float | None:
        steps, _ = run.series("eval_loss")
        return _generalisation_gap(run, int(steps[-1])) if len(steps) else None

    def overfit_ratio(run: Run) -> float | None:
        steps, values = run.series("eval_loss")
        trained = nearest(run, "loss", int(steps[-1])) if len(steps) else None
        return float(values[-1]) / trained[1] if trained and trained[1] else None

    matrix: dict[str, Any] = {
        "convergence": convergence(versions),
        "final_train_loss": summarised(versions, _final("loss")),
        "final_eval_loss": summarised(versions, _final("eval_loss")),
        "grad_norm_cv": summary["grad_norm"]["cv_after_warmup"],
        "overfit_gap": summarised(versions, overfit_gap),
        "overfit_ratio": summarised(versions, overfit_ratio),
        "augmentation": {key: summarised(versions, _augment_measure(key)) for key in _augment_keys(versions)},
        "evaluation": {key: summarised(versions, lambda run, key=key: numeric_leaves(run.eval).get(key)) for key in _eval_keys(versions)},
    }
    for criterion in ("final_train_loss", "final_eval_loss", "grad_norm_cv", "overfit_gap", "overfit_ratio"):
        matrix[criterion]["best"] = _lowest(matrix[criterion]["values"])
    return matrix


def convergence(versions: list[Version]) -> dict[str, Any]:
    """Per version: the training-loss gap to the baseline at the step where the mean curves differ most."""
    baseline = versions[0]
    base_curve = {step: point["mean"] for step, point in curve(baseline, "loss").items()}
    result: dict[str, Any] = {}
    for version in versions[1:]:
        means = {step: point["mean"] for step, point in curve(version, "loss").items()}
        common = sorted(set(base_curve) & set(means))
        if not common:
            result[version.name] = None
            continue
        gaps = np.array([means[step] - base_curve[step] for step in common])
        step = common[int(np.argmax(np.abs(gaps)))]
        base_values = [nearest(run, "loss", step)[1] for run in baseline.runs]
        values = [nearest(run, "loss", step)[1] for run in version.runs]
        noise = pooled_sd([base_values, values])
        result[version.name] = {"step": step, "baseline_mean": base_curve[step], "mean": means[step], **compare(base_values, values, noise)}
    faster = {name: entry["diff"] for name, entry in result.items() if entry}
    result["best"] = min(faster, key=faster.get) if faster and min(faster.values()) < 0 else baseline.name
    return result


def curve(version: Version, key: str) -> dict[int, dict[str, Any]]:
    """Mean/CI/n over the version's runs at the steps every run logged (so each point averages the same runs)."""
    per_step: dict[int, list[float]] = {}
    for run in version.runs:
        steps, values = run.series(key)
        for step, value in zip(steps.tolist(), values.tolist()):
            per_step.setdefault(step, []).append(value)
    return {step: describe(values) for step, values in sorted(per_step.items()) if len(values) == len(version.runs)}


def _lowest(values: dict[str, dict[str, Any]]) -> str | None:
    means = {name: value["mean"] for name, value in values.items() if value["mean"] is not None}
    return min(means, key=means.get) if means else None


def realised_augmentation(run: Run) -> dict[str, float]:
    """Totals over the run's `augment` records (the last record of each epoch), else the summary's numbers."""
    by_epoch = {record["augment"].get("epoch"): record["augment"] for record in run.records if isinstance(record.get("augment"), dict)}
    if by_epoch:
        totals = {key: float(sum(epoch.get(key) or 0 for epoch in by_epoch.values())) for key in AUGMENT_COUNTS}
        totals["masked_share"] = totals["masked_samples"] / totals["samples"] if totals["samples"] else 0.0
        return totals
    return numeric_leaves(run.summary.get("augmentation") or {})


def _augment_keys(versions: list[Version]) -> list[str]:
    return sorted({key for version in versions for run in version.runs for key in realised_augmentation(run)})


def _augment_measure(key: str) -> Callable[[Run], float | None]:
    return lambda run: realised_augmentation(run).get(key)


def _eval_keys(versions: list[Version]) -> list[str]:
    return sorted({key for version in versions for run in version.runs for key in numeric_leaves(run.eval)})
