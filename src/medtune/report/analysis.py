"""Every number of the comparison report, computed from the runs; rendering only formats what is here.

Each quantity is first computed per run, then summarised per version (mean, 95% CI, n) and compared with
the baseline version by the one rule of stats.py. Conclusions (convergence, best, ties, warnings) are
defined in docs/REPORT.md. The result is plain JSON data, checked against schema.Summary and written as
summary.json; the Markdown/HTML documents are made from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtune.config import flatten
from medtune.report.inputs import COMPARED_SERIES, ReportError, Run, numeric_leaves
from medtune.report.schedule import check_schedule, configured_warmup
from medtune.report.stats import (
    ALPHA,
    CONFIDENCE,
    DEFAULT_EFFECT,
    LOSS_EFFECT,
    NEAR_ZERO,
    SHARE_EFFECT,
    MinimumEffect,
    compare,
    describe,
    pooled_sd,
)

IGNORED_CONFIG_KEYS = {"run_name", "output_dir", "seed", "logging_dir"}
"""Config keys (last dotted part) that differ between runs without making them different experiments."""
SAME_SETUP_KEYS = (
    "model.name_or_path",
    "model.gguf_file",
    "data.train",
    "data.validation",
    "data.max_length",
    "data.max_rows",
)
"""Settings that make versions incomparable when they differ: a warning at the top of the report."""
PHASES = ("warmup", "early", "late")
LR_TOLERANCE = 0.01
"""Largest accepted |logged - expected| LR, as a fraction of the peak LR."""
AUGMENT_COUNTS = ("samples", "masked_samples", "terms_masked")
EVAL_METADATA_SECTIONS = {"decoding", "model", "finish_reasons"}
EVAL_METADATA_KEYS = {"n", "skipped_rows", "eval_tokens", "answer_cut", "step"}
"""eval.json numbers that describe how the evaluation was made, not how well a version did."""


@dataclass
class Version:
    name: str
    runs: list[Run]


def analyse(versions: list[Version], steps: Sequence[int] | None, phase_bounds: Sequence[float]) -> dict[str, Any]:
    """The report's data. `versions[0]` is the baseline; `steps=None` picks four evenly spaced steps, and requested
    steps after the last trained step are left out (a warning names them).

    A run whose logs repeat another run of the same version is counted once (see identical_runs)."""
    duplicates = identical_runs(versions)
    dropped = [duplicate for duplicate, pair in duplicates if pair["same_version"]]
    versions = [
        Version(version.name, [run for run in version.runs if not any(run is copy for copy in dropped)])
        for version in versions
    ]
    chosen_steps, past_end = table_steps(versions, steps)
    summary: dict[str, Any] = {
        "baseline": versions[0].name,
        "confidence": CONFIDENCE,
        "alpha": ALPHA,
        "min_effect": {
            "loss": LOSS_EFFECT.as_dict(),
            "share": SHARE_EFFECT.as_dict(),
            "other": DEFAULT_EFFECT.as_dict(),
        },
        "near_zero": NEAR_ZERO,
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
    summary["evaluation_setup"] = evaluation_setup(versions)
    summary["warnings"] = sanity_warnings(versions, summary, [pair for _, pair in duplicates], past_end)
    return summary


def identical_runs(versions: list[Version]) -> list[tuple[Run, dict[str, Any]]]:
    """Each run whose logged loss, grad norm, LR and eval loss agree at every step with an earlier run's, with the
    facts of the pair: whether it is one run given twice (`same_source`), and which of the two runs' augmentation
    masked no sample (`unmasked`: why two distinct runs of different versions can train alike)."""
    seen: dict[tuple, tuple[str, Run]] = {}
    found = []
    for version in versions:
        for run in version.runs:
            fingerprint = tuple(
                (tuple(steps.tolist()), tuple(values.tolist())) for steps, values in map(run.series, COMPARED_SERIES)
            )
            if fingerprint not in seen:
                seen[fingerprint] = (version.name, run)
                continue
            first_version, first = seen[fingerprint]
            pair = {
                "original": first.name,
                "duplicate": run.name,
                "versions": [first_version, version.name],
                "same_version": first_version == version.name,
                "same_source": _same_source(first, run),
                "unmasked": [each.name for each in (first, run) if _masked_nothing(each)],
            }
            found.append((run, pair))
    return found


def _same_source(first: Run, second: Run) -> bool:
    """Both were read from the same file or folder (one path given twice, perhaps spelled differently)."""
    return Path(first.source.path).resolve() == Path(second.source.path).resolve()


def _masked_nothing(run: Run) -> bool:
    """The run's augmentation drew samples but masked none of them, so it trained as without augmentation."""
    realised = realised_augmentation(run)
    return realised.get("samples", 0) > 0 and realised.get("masked_samples") == 0


def table_steps(versions: list[Version], steps: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """The steps of the training-loss table, and the requested steps left out because no run trained that far."""
    last = last_trained_step(versions)
    if not steps or last is None:
        return (list(steps) if steps else default_steps(versions)), []
    kept = [step for step in steps if step <= last]
    if not kept:
        raise ReportError(f"steps {list(steps)}: all come after the last trained step {last}, nothing to show")
    return kept, [step for step in steps if step > last]


def last_trained_step(versions: list[Version]) -> int | None:
    """The last step any run has a training loss for; None when no run logged one."""
    ends = [int(steps[-1]) for version in versions for run in version.runs if len(steps := run.series("loss")[0])]
    return max(ends, default=None)


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


def summarised(
    versions: list[Version],
    measure: Callable[[Run], float | None],
    effect: MinimumEffect = DEFAULT_EFFECT,
    relative: bool = True,
) -> dict[str, Any]:
    """A per-run quantity: per version mean/CI/n and the comparison with the baseline."""
    values = {version.name: per_run(version, measure) for version in versions}
    baseline = versions[0].name
    return {
        "values": {name: describe(runs) for name, runs in values.items()},
        "vs_baseline": {
            name: compare(values[baseline], runs, effect, relative) for name, runs in values.items() if name != baseline
        },
        "per_run": values,
    }


def tied_best(per_version: dict[str, list[float]], effect: MinimumEffect, lower: bool = True) -> list[str]:
    """The versions that lead on a quantity: the one with the best mean and every version not worth
    distinguishing from it. Empty when fewer than two versions have values or when all of them tie."""
    present = {name: values for name, values in per_version.items() if values}
    if len(present) < 2:
        return []
    means = {name: float(np.mean(values)) for name, values in present.items()}
    leader = min(means, key=means.get) if lower else max(means, key=means.get)
    tied = [
        name for name in present if name == leader or not compare(present[leader], present[name], effect)["significant"]
    ]
    return [] if len(tied) == len(present) else tied


def _version_facts(version: Version) -> dict[str, Any]:
    return {
        "name": version.name,
        "n_runs": len(version.runs),
        "runs": [
            {
                "name": run.name,
                "source": asdict(run.source),
                "notes": [asdict(note) for note in run.notes],
                "random_weights": run.summary.get("random_weights"),
                "config_read": bool(run.config),
                "last_step": last_step(run),
                "max_steps": run.max_steps(),
                "imported_config": run.imported_config,
            }
            for run in version.runs
        ],
    }


def last_step(run: Run) -> int:
    return max(int(record["step"]) for record in run.records)


def _random_weights(versions: list[Version]) -> dict[str, Any]:
    runs = [run for version in versions for run in version.runs]
    return {
        "any": any(run.summary.get("random_weights") is True for run in runs),
        "runs": [run.name for run in runs if run.summary.get("random_weights") is True],
        "unknown": [run.name for run in runs if not isinstance(run.summary.get("random_weights"), bool)],
    }


def config_diff(versions: list[Version]) -> list[dict[str, Any]]:
    """Dotted config keys whose values differ between versions (ignoring run names, output folders and seeds), over
    the runs whose config was read: a version without one has no column."""
    per_version: dict[str, dict[str, list[Any]]] = {}
    for version in versions:
        flat_configs = [flatten(run.config) for run in version.runs if run.config]
        if not flat_configs:
            continue
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
        first = next(iter(values.values()))
        if any(value != first for value in values.values()):
            rows.append({"key": key, "values": values})
    return rows


def metric_table(
    versions: list[Version], key: str, steps: Sequence[int], effect: MinimumEffect = LOSS_EFFECT
) -> dict[str, Any]:
    """One row per requested step: the metric at the nearest logged step of every run. A requested step whose
    nearest logged steps are those of an earlier row would repeat that row: it is left out and listed."""
    rows, repeated = [], []
    for step in steps:
        used = {
            version.name: sorted({hit[0] for run in version.runs if (hit := nearest(run, key, step))})
            for version in versions
        }
        same = next((row["step"] for row in rows if row["steps_used"] == used), None)
        if same is not None:
            repeated.append({"step": int(step), "same_as": same})
            continue
        row = summarised(versions, lambda run, step=step: hit[1] if (hit := nearest(run, key, step)) else None, effect)
        rows.append(
            {"step": int(step), "steps_used": used, "exact": all(found == [step] for found in used.values()), **row}
        )
    return {"key": key, "rows": rows, "repeated": repeated}


def eval_table(versions: list[Version]) -> dict[str, Any]:
    """Eval loss at every step any run evaluated at, with the generalisation gap (eval - train loss)."""
    steps = sorted({int(step) for version in versions for run in version.runs for step in run.series("eval_loss")[0]})
    table = metric_table(versions, "eval_loss", steps)
    for row in table["rows"]:
        row["gap"] = summarised(
            versions, lambda run, step=row["step"]: _generalisation_gap(run, step), LOSS_EFFECT, relative=False
        )
    return table


def _generalisation_gap(run: Run, step: int) -> float | None:
    evaluated, trained = nearest(run, "eval_loss", step), nearest(run, "loss", step)
    return evaluated[1] - trained[1] if evaluated and trained else None


def _total_steps(run: Run) -> int:
    return run.max_steps() or last_step(run)


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

    def after_warmup(statistic: Callable[[np.ndarray], float | None]) -> Callable[[Run], float | None]:
        def measure(run: Run) -> float | None:
            steps, values = run.series("grad_norm")
            chosen = values[phase_of(run, steps, phase_bounds) > 0]
            return statistic(chosen) if len(chosen) >= 2 else None

        return measure

    def clipped(run: Run) -> float | None:
        threshold, (_, values) = run.setting("train.max_grad_norm"), run.series("grad_norm")
        return float(np.mean(values > threshold)) if isinstance(threshold, (int, float)) and len(values) else None

    statistics = {"min": np.min, "max": np.max, "median": np.median}
    cv = after_warmup(coefficient_of_variation)
    clipped_fraction = summarised(versions, clipped, SHARE_EFFECT)
    clipped_fraction["most"] = tied_best(clipped_fraction["per_run"], SHARE_EFFECT, lower=False)
    return {
        "phase_bounds": list(phase_bounds),
        "phase_steps": {
            version.name: {run.name: _phase_steps(run, phase_bounds) for run in version.runs} for version in versions
        },
        "first_logged": {
            version.name: min(
                (int(run.series("grad_norm")[0][0]) for run in version.runs if len(run.series("grad_norm")[0])),
                default=None,
            )
            for version in versions
        },
        "no_warmup": [version.name for version in versions if all(configured_warmup(run) == 0 for run in version.runs)],
        "phases": {
            phase: {name: summarised(versions, in_phase(index, statistic)) for name, statistic in statistics.items()}
            for index, phase in enumerate(PHASES)
        },
        "sd_after_warmup": summarised(versions, after_warmup(lambda values: float(values.std(ddof=1)))),
        "cv_after_warmup": summarised(versions, cv),
        "clipped_fraction": clipped_fraction,
        "max_grad_norm": {
            version.name: sorted({str(run.setting("train.max_grad_norm")) for run in version.runs})
            for version in versions
        },
        "cv_pairs": [
            {
                "reference": first.name,
                "other": second.name,
                **compare(per_run(first, cv), per_run(second, cv), DEFAULT_EFFECT),
            }
            for index, first in enumerate(versions)
            for second in versions[index + 1 :]
        ],
    }


def coefficient_of_variation(values: np.ndarray) -> float | None:
    """sd / mean; None when the mean is not positive (grad norms all zero), where the ratio is undefined."""
    mean = float(values.mean())
    return float(values.std(ddof=1)) / mean if mean > 0 else None


def _phase_steps(run: Run, phase_bounds: Sequence[float]) -> list[list[int]]:
    """[first, last] whole step of each phase as phase_of assigns them (a phase holds the steps up to its bound);
    a phase whose last step comes before its first holds no step."""
    total = _total_steps(run)
    ends = [math.floor(bound * total) for bound in phase_bounds] + [total]
    starts = [0] + [end + 1 for end in ends[:-1]]
    return [[start, end] for start, end in zip(starts, ends)]


def lr_dynamics(versions: list[Version]) -> dict[str, Any]:
    """Logged LR values, each with the step it was logged at, next to the schedule the config sets."""

    def logged(pick: Callable[[Run, np.ndarray, np.ndarray], int], want_step: bool) -> Callable[[Run], float | None]:
        def measure(run: Run) -> float | None:
            steps, values = run.series("learning_rate")
            if not len(steps):
                return None
            index = pick(run, steps, values)
            return float(steps[index]) if want_step else float(values[index])

        return measure

    picks: dict[str, Callable[[Run, np.ndarray, np.ndarray], int]] = {
        "first_logged": lambda run, steps, values: 0,
        "largest_logged": lambda run, steps, values: int(np.argmax(values)),
        "mid": lambda run, steps, values: int(np.argmin(np.abs(steps - _total_steps(run) / 2))),
        "last_logged": lambda run, steps, values: len(steps) - 1,
    }
    result: dict[str, Any] = {}
    for name, pick in picks.items():
        result[name] = summarised(versions, logged(pick, want_step=False))
        result[f"{name}_step"] = summarised(versions, logged(pick, want_step=True))
    checks = {
        version.name: {run.name: check_schedule(run, LR_TOLERANCE) for run in version.runs} for version in versions
    }
    return {
        **result,
        "tolerance": LR_TOLERANCE,
        "schedule_check": checks,
        "warmup_unlogged": {
            version.name: [run.name for run in version.runs if _warmup_unlogged(run)] for version in versions
        },
    }


def _warmup_unlogged(run: Run) -> bool:
    """The config has a warmup but no LR was logged inside it (the logged values cannot show the ramp)."""
    warmup, (steps, _) = configured_warmup(run), run.series("learning_rate")
    return bool(warmup) and len(steps) > 0 and int(steps[0]) > warmup


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
    """The matrix of criteria x versions (comparisons only), with the leading versions per criterion."""

    def overfit_gap(run: Run) -> float | None:
        steps, _ = run.series("eval_loss")
        return _generalisation_gap(run, int(steps[-1])) if len(steps) else None

    def overfit_ratio(run: Run) -> float | None:
        steps, values = run.series("eval_loss")
        trained = nearest(run, "loss", int(steps[-1])) if len(steps) else None
        return float(values[-1]) / trained[1] if trained and trained[1] > 0 else None  # a ratio to a loss above 0

    matrix: dict[str, Any] = {
        "convergence": convergence(versions),
        "final_train_loss": summarised(versions, _final("loss"), LOSS_EFFECT),
        "final_eval_loss": summarised(versions, _final("eval_loss"), LOSS_EFFECT),
        "grad_norm_cv": dict(summary["grad_norm"]["cv_after_warmup"]),  # a copy: only the matrix ranks it
        "overfit_gap": summarised(versions, overfit_gap, LOSS_EFFECT, relative=False),
        "overfit_ratio": summarised(versions, overfit_ratio),
        "augmentation": {key: summarised(versions, _augment_measure(key)) for key in _augment_keys(versions)},
        "evaluation": {
            key: summarised(versions, _eval_measure(key)) for key in _eval_keys(versions) if not is_eval_metadata(key)
        },
    }
    for criterion, effect in (
        ("final_train_loss", LOSS_EFFECT),
        ("final_eval_loss", LOSS_EFFECT),
        ("grad_norm_cv", DEFAULT_EFFECT),
        ("overfit_gap", LOSS_EFFECT),
        ("overfit_ratio", DEFAULT_EFFECT),
    ):
        matrix[criterion]["best"] = tied_best(matrix[criterion]["per_run"], effect)
    return matrix


@dataclass
class LossWindow:
    """Training-loss curves of several versions on one grid of steps after every run's warmup."""

    warmup_end: int
    grid: np.ndarray
    per_run: dict[str, np.ndarray]
    """version -> runs x grid, each run's loss linearly interpolated between its logged steps."""

    def window_means(self) -> dict[str, list[float]]:
        """Per run: the area under its loss curve over the window, divided by the window's length."""
        span = float(self.grid[-1] - self.grid[0])
        return {
            name: [float(np.trapezoid(curve, self.grid) / span) for curve in runs]
            for name, runs in self.per_run.items()
        }


def loss_window(versions: list[Version]) -> LossWindow | None:
    """The steps after the latest configured warmup end (and from the latest first logged step) to the earliest
    last logged step over all runs, at every step any of them logged; None with fewer than two such steps."""
    runs = [run for version in versions for run in version.runs]
    series = [run.series("loss") for run in runs]
    warmup_end = max(configured_warmup(run) or 0 for run in runs)  # step warmup_end + 1 is the first at the peak LR
    start = max(int(steps[0]) for steps, _ in series)
    end = min(int(steps[-1]) for steps, _ in series)
    grid = np.array(
        sorted({int(step) for steps, _ in series for step in steps if start <= step <= end and step > warmup_end}),
        dtype=float,
    )
    if len(grid) < 2:
        return None
    per_run = {
        version.name: np.array([np.interp(grid, *run.series("loss")) for run in version.runs]) for version in versions
    }
    return LossWindow(warmup_end, grid, per_run)


def convergence(versions: list[Version]) -> dict[str, Any]:
    """Whole-curve comparison of training loss after the warmup (docs/REPORT.md, "Convergence")."""
    baseline = versions[0]
    pairs: dict[str, Any] = {}
    for version in versions[1:]:
        window = loss_window([baseline, version])
        if window is None:
            pairs[version.name] = None
            continue
        means = window.window_means()
        base_curve, curve_ = window.per_run[baseline.name].mean(axis=0), window.per_run[version.name].mean(axis=0)
        pairs[version.name] = {
            "warmup_end": window.warmup_end,
            "start": int(window.grid[0]),
            "end": int(window.grid[-1]),
            "points": len(window.grid),
            "share_lower": float(np.mean(curve_ < base_curve)),
            "share_higher": float(np.mean(curve_ > base_curve)),
            "baseline_window_loss": float(np.mean(means[baseline.name])),
            "window_loss": float(np.mean(means[version.name])),
            **compare(means[baseline.name], means[version.name], LOSS_EFFECT),
        }
    everyone = loss_window(versions)
    means = everyone.window_means() if everyone else {}
    target, reached = steps_to_loss(versions)
    return {
        "window": {"warmup_end": everyone.warmup_end, "start": int(everyone.grid[0]), "end": int(everyone.grid[-1])}
        if everyone
        else None,
        "window_loss": {name: describe(values) for name, values in means.items()},
        "best": tied_best(means, LOSS_EFFECT),
        "target_loss": target,
        "steps_to_target": reached,
        "pairs": pairs,
    }


def steps_to_loss(versions: list[Version]) -> tuple[float | None, dict[str, int | None]]:
    """The highest final mean training loss of the versions (a level every version reaches), and per version
    the first step at which its mean curve is at or below it."""
    curves = {version.name: curve(version, "loss") for version in versions}
    finals = [points[max(points)]["mean"] for points in curves.values() if points]
    if not finals:
        return None, {}
    target = max(finals)
    reached = {
        name: next((step for step, point in points.items() if point["mean"] <= target), None)
        for name, points in curves.items()
    }
    return target, reached


def curve(version: Version, key: str) -> dict[int, dict[str, Any]]:
    """Mean/CI/n over the version's runs at the steps every run logged (so each point averages the same runs)."""
    per_step: dict[int, list[float]] = {}
    for run in version.runs:
        steps, values = run.series(key)
        for step, value in zip(steps.tolist(), values.tolist()):
            per_step.setdefault(step, []).append(value)
    return {step: describe(values) for step, values in sorted(per_step.items()) if len(values) == len(version.runs)}


def realised_augmentation(run: Run) -> dict[str, float]:
    """Totals over the run's `augment` records (the last record of each epoch), else the summary's numbers."""
    by_epoch = {
        record["augment"].get("epoch"): record["augment"]
        for record in run.records
        if isinstance(record.get("augment"), dict)
    }
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


def _eval_measure(key: str) -> Callable[[Run], float | None]:
    return lambda run: numeric_leaves(run.eval).get(key)


def is_eval_metadata(key: str) -> bool:
    """`decoding.max_new_tokens`, `n`, `robust.n`, `model.step`: how the evaluation was made, not a result."""
    parts = key.split(".")
    return parts[0] in EVAL_METADATA_SECTIONS or parts[-1] in EVAL_METADATA_KEYS


def evaluation_setup(versions: list[Version]) -> list[dict[str, Any]]:
    """The eval.json metadata per version (distinct values over its runs), for its own small table."""
    rows = []
    for key in (key for key in _eval_keys(versions) if is_eval_metadata(key)):
        values = {
            version.name: sorted({value for value in per_run(version, _eval_measure(key))}) for version in versions
        }
        rows.append({"key": key, "values": values})
    return rows


def non_finite_values(versions: list[Version]) -> list[dict[str, Any]]:
    """Per run, the compared metrics it logged as NaN or ±inf (where and how often): a diverged run whose non-finite
    values the tables, charts and tests leave out would otherwise look like one that trained well."""
    found = []
    for version in versions:
        for run in version.runs:
            metrics = {
                key: {"first_step": steps[0], "count": len(steps)}
                for key in COMPARED_SERIES
                if (steps := run.non_finite_steps(key))
            }
            if metrics:
                found.append({"kind": "non_finite", "version": version.name, "run": run.name, "metrics": metrics})
    return found


def sanity_warnings(
    versions: list[Version], summary: dict[str, Any], duplicates: list[dict[str, Any]], past_end: list[int]
) -> list[dict[str, Any]]:
    """What makes the comparison itself questionable, for the top of the report (docs/REPORT.md, "Warnings")."""
    warnings: list[dict[str, Any]] = [{"kind": "identical_runs", **pair} for pair in duplicates]
    warnings += non_finite_values(versions)
    if past_end:
        warnings.append({"kind": "steps_past_end", "steps": past_end, "last": last_trained_step(versions)})
    for kind, measure in (("planned_steps", Run.max_steps), ("last_steps", last_step)):
        values = {
            version.name: sorted({value for run in version.runs if (value := measure(run)) is not None})
            for version in versions
        }
        if len({value for found in values.values() for value in found}) > 1:
            warnings.append({"kind": kind, "values": values})
    for row in summary["config_diff"]:
        # a version whose runs do not record the setting (an imported run) is unknown there, not different
        known = {name: values for name, values in row["values"].items() if values != [None]}
        if row["key"] in SAME_SETUP_KEYS and len({repr(values) for values in known.values()}) > 1:
            warnings.append({"kind": "setting", "key": row["key"], "values": known})
    for repeated in summary["train_loss"]["repeated"]:
        warnings.append({"kind": "repeated_rows", **repeated})
    return warnings
