"""The report as a list of blocks (headings, paragraphs, tables, images), built from the typed summary.

The Markdown and HTML writers (markup.py) only lay these blocks out, so both files say exactly the same.
Cells are plain text; the writers escape them. Every word comes from the wording tables (wording.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medtune.report.analysis import PHASES
from medtune.report.insights import verdict
from medtune.report.schema import (
    Comparison,
    Described,
    IdenticalRuns,
    Insight,
    NonFinite,
    NoteFacts,
    SourceFacts,
    Summarised,
    Summary,
)

CHARTS = ("loss", "eval_loss", "grad_norm", "learning_rate")
MISSING = "—"


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str
    warning: bool = False


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Bullets:
    items: list[str] = field(default_factory=list)


@dataclass
class Image:
    file: str
    alt: str


Block = Heading | Paragraph | Table | Bullets | Image


def loss(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def signed_loss(value: float | None) -> str:
    return MISSING if value is None else f"{value:+.4f}"


def number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4g}"


def lr(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2e}"


def signed_pct(value: float | None) -> str:
    return MISSING if value is None else f"{value * 100:+.2f}%"


def pct(value: float | None) -> str:
    return MISSING if value is None else f"{value * 100:.1f}%"


P_FLOOR = 1e-16
"""Below this a p-value is only as exact as float arithmetic (0 when two constant groups differ): given as a bound."""


def p_value(value: float) -> str:
    """`p=0.012`, `p=3.8e-06`, or `p<1e-16`."""
    if value < P_FLOOR:
        return f"p<{P_FLOOR:.0e}"
    return f"p={value:.3f}" if value >= 0.001 else f"p={value:.1e}"


def step(value: float | None) -> str:
    return MISSING if value is None else str(int(value))


def stat(described: Described, fmt: Callable[[float | None], str]) -> str:
    """`mean ± ci (n=k)` with several runs, the value alone with one, — with none."""
    if described.mean is None:
        return MISSING
    if described.ci95 is None:
        return fmt(described.mean)
    if _same_in_every_run(described):
        return f"{fmt(described.mean)} (n={described.n})"
    return f"{fmt(described.mean)} ± {fmt(described.ci95).lstrip('+')} (n={described.n})"


def _same_in_every_run(described: Described) -> bool:
    """Several runs with one value (e.g. a scheduled LR, or the step it was logged at)."""
    return described.mean is not None and described.ci95 is not None and described.ci95 <= 1e-9 * abs(described.mean)


def change(comparison: Comparison, fmt_diff: Callable[[float | None], str] = signed_loss) -> str:
    """The relative change, or the absolute difference where the reference is near zero (no ratio printed)."""
    return signed_pct(comparison.rel) if comparison.rel is not None else fmt_diff(comparison.diff)


def trend(comparison: Comparison, fmt_diff: Callable[[float | None], str] = signed_loss) -> str:
    """Change against the reference, with Welch's p (n.s. when not significant); a single run has no test, so its
    change stands alone (the insights say whether it passes the minimum effect)."""
    if comparison.diff is None:
        return MISSING
    text = change(comparison, fmt_diff)
    if comparison.test == "welch":
        text += f" ({p_value(comparison.p_value)}{'' if comparison.significant else ', n.s.'})"
    return text


def signed_number(value: float | None) -> str:
    return MISSING if value is None else f"{value:+.4g}"


PARAM_FORMATS: dict[str, Callable[[Any], str]] = {
    "loss": loss,
    "base_loss": loss,
    "value": number,
    "base_value": number,
    "target": loss,
    "threshold": number,
    "gap": signed_loss,
    "p": p_value,
    "deviation": pct,
    "fraction": pct,
    "share": pct,
    "step": step,
    "start": step,
    "end": step,
}
"""How each insight parameter is written; the others (names, counts) are written as they are."""


def build_document(summary: Summary, w: dict[str, str], chart_files: dict[str, str]) -> list[Block]:
    names = summary.names
    blocks: list[Block] = [Heading(w["title"].format(versions=w["list_sep"].join(names)), level=1)]
    blocks += _warnings(summary, w)
    blocks.append(Paragraph(w["intro"].format(baseline=summary.baseline)))
    blocks += _method_section(summary, w)
    blocks += _runs_section(summary, w)
    blocks += _versions_section(summary, w, names)
    blocks += _loss_section(summary, w, names)
    blocks += _eval_section(summary, w, names)
    blocks += _grad_section(summary, w, names)
    blocks += _lr_section(summary, w, names)
    blocks += _advantages_section(summary, w, names)
    blocks += _evaluation_setup_section(summary, w, names)
    blocks += [Heading(w["insights_heading"]), Bullets([insight.text for insight in summary.insights])]
    for chart in CHARTS:
        if chart in chart_files:
            index = next(
                i
                for i, block in enumerate(blocks)
                if isinstance(block, Heading) and block.text == w[_CHART_SECTION[chart]]
            )
            notes = [
                Paragraph(w["coinciding_note"].format(first=first, second=second))
                for first, second in summary.coinciding.get(chart, [])
            ]
            end = _section_end(blocks, index)
            blocks[end:end] = [Image(chart_files[chart], w[f"chart_{chart}"]), *notes]
    return blocks


_CHART_SECTION = {
    "loss": "train_heading",
    "eval_loss": "eval_heading",
    "grad_norm": "grad_heading",
    "learning_rate": "lr_heading",
}


def _section_end(blocks: list[Block], heading_index: int) -> int:
    for index in range(heading_index + 1, len(blocks)):
        if isinstance(blocks[index], Heading) and blocks[index].level <= blocks[heading_index].level:
            return index
    return len(blocks)


def insight_text(insight: Insight, w: dict[str, str]) -> str:
    """An insight as a sentence of the report's language."""
    data = insight.model_dump()
    params = {
        key: PARAM_FORMATS[key](value) if key in PARAM_FORMATS and value is not None else value
        for key, value in data.items()
    }
    for key in ("versions", "reached"):
        if key in data:
            params[key] = w["list_sep"].join(data[key])
    for key, fmt in (("fractions", pct), ("gaps", signed_loss)):
        if key in data:
            params[key] = w["list_sep"].join(f"{name} {fmt(value)}" for name, value in data[key].items())
    for key, fmt in (("gap", signed_loss), ("fraction", pct)):
        if f"{key}_low" in data:
            low, high = fmt(data[f"{key}_low"]), fmt(data[f"{key}_high"])
            params[f"{key}_range"] = low if low == high else w["value_range"].format(low=low, high=high)
    if "diff" in data:
        params["change"] = signed_pct(data["rel"]) if data.get("rel") is not None else signed_loss(data["diff"])
    if "verdict" in data:
        params["verdict"] = verdict_text(data, w)
    if insight.kind == "schedule_bad":
        params["schedule"] = w[f"schedule_{data['schedule']}"]
        params["run"] = run_in_version(data["run"], data["version"], w)
    return w[f"insight_{insight.kind}"].format(**params)


def run_in_version(run: str, version: str, w: dict[str, str]) -> str:
    """`run (version)`, or the run alone when it is named like its version."""
    return run if run == version else w["with_aside"].format(value=run, aside=version)


def verdict_text(judged: dict[str, Any], w: dict[str, str]) -> str:
    """A judgement (insights.verdict) as words."""
    p = judged.get("p")
    return w[f"verdict_{judged['verdict']}"].format(
        p=p_value(p) if p is not None else "", threshold=number(judged.get("threshold"))
    )


def _warnings(summary: Summary, w: dict[str, str]) -> list[Block]:
    """What makes the comparison itself questionable, before anything else (docs/REPORT.md, "Warnings")."""
    texts = []
    random = summary.random_weights
    if random.any:
        texts.append(w["random_weights"].format(runs=w["list_sep"].join(random.runs)))
    for warning in summary.warnings:
        if warning.kind == "identical_runs":
            texts.append(_identical_text(warning, w))
        elif warning.kind == "non_finite":
            texts.append(_non_finite_text(warning, w))
        elif warning.kind in ("planned_steps", "last_steps", "setting"):
            values = w["list_sep"].join(
                w["labelled"].format(label=name, text=_setting_value(found, w))
                for name, found in warning.values.items()
            )
            texts.append(w[f"warn_{warning.kind}"].format(values=values, key=getattr(warning, "key", "")))
        elif warning.kind == "repeated_rows":
            texts.append(w["warn_repeated_rows"].format(step=warning.step, same_as=warning.same_as))
        elif warning.kind == "steps_past_end":
            texts.append(
                w["warn_steps_past_end"].format(steps=w["list_sep"].join(map(str, warning.steps)), last=warning.last)
            )
        else:
            texts.append(w[f"warn_{warning.kind}"])
    single = summary.noise.single_run_versions
    if single:
        texts.append(w["single_run"].format(versions=w["list_sep"].join(single), advice=w[f"advice_{summary.made_by}"]))
    blocks: list[Block] = [Paragraph(text, warning=True) for text in texts]
    if random.unknown:
        blocks.append(Paragraph(w["random_unknown"].format(runs=w["list_sep"].join(random.unknown))))
    return blocks


def _non_finite_text(warning: NonFinite, w: dict[str, str]) -> str:
    """Which metrics of a run were NaN or ±inf, from which step and how often."""
    metrics = w["list_sep"].join(
        w["non_finite_metric" if found.count > 1 else "non_finite_metric_one"].format(
            key=key, count=found.count, first_step=found.first_step
        )
        for key, found in warning.metrics.items()
    )
    return w["warn_non_finite"].format(
        run=run_in_version(warning.run, warning.version, w), version=warning.version, metrics=metrics
    )


def _identical_text(warning: IdenticalRuns, w: dict[str, str]) -> str:
    """One run given twice is said to be one run; two runs that logged the same values are said to be two, with the
    likely cause where the data shows it (an augmentation that masked nothing)."""
    version, other = warning.versions
    if warning.same_source:
        key = "warn_given_twice" if warning.same_version else "warn_given_for_two"
        return w[key].format(run=warning.original, version=version, other=other)
    if warning.same_version:
        return w["warn_identical_same"].format(first=warning.original, second=warning.duplicate, version=version)
    cause = w["identical_cause_unmasked"].format(runs=w["list_sep"].join(warning.unmasked)) if warning.unmasked else ""
    return w["warn_identical_across"].format(
        first=run_in_version(warning.original, version, w),
        second=run_in_version(warning.duplicate, other, w),
        version=version,
        other=other,
        cause=cause,
    )


def _method_section(summary: Summary, w: dict[str, str]) -> list[Block]:
    effects = summary.min_effect
    method = w["stats_method"].format(
        confidence_pct=round(summary.confidence * 100),
        alpha=f"{summary.alpha:g}",
        loss_rel=pct(effects["loss"].relative),
        loss_abs=f"{effects['loss'].absolute:g}",
        share_abs=f"{effects['share'].absolute * 100:g}",
        other_rel=pct(effects["other"].relative),
        near_zero=pct(summary.near_zero),
    )
    return [Heading(w["method_heading"]), Paragraph(method), Paragraph(w["convergence_method"])]


def _runs_section(summary: Summary, w: dict[str, str]) -> list[Block]:
    flags = {True: w["yes"], False: w["no"], None: w["unknown"]}
    rows = [
        [
            version.name,
            run.name,
            source_text(run.source, w),
            step(run.last_step),
            step(run.max_steps),
            flags[run.random_weights],
            w["part_sep"].join(note_text(note, w) for note in run.notes),
        ]
        for version in summary.versions
        for run in version.runs
    ]
    headers = [
        w[key]
        for key in ("col_version", "col_run", "col_source", "col_last_step", "col_planned", "col_random", "col_notes")
    ]
    blocks: list[Block] = [Heading(w["runs_heading"]), Table(headers, rows)]
    noise = summary.noise
    if noise.from_versions:
        blocks.append(
            Paragraph(
                w["noise_known"].format(
                    versions=w["list_sep"].join(noise.from_versions),
                    train_sd=loss(noise.final_train_loss_sd),
                    eval_sd=loss(noise.final_eval_loss_sd),
                )
            )
        )
    else:
        blocks.append(Paragraph(w["noise_unknown"]))
    return blocks


def source_text(source: SourceFacts, w: dict[str, str]) -> str:
    """Where a run was read from, in the report's language."""
    return w[f"source_{source.kind}"].format(path=source.path)


def note_text(note: NoteFacts, w: dict[str, str]) -> str:
    """A run's note in the report's language, after the file (and config key) it is about."""
    fields = {
        key: w["list_sep"].join(map(str, value)) if isinstance(value, list) else value
        for key, value in note.fields.items()
    }
    text = w[f"note_{note.code}"].format(**fields)
    if "key" in fields:
        return w["note_at_key"].format(file=fields["file"], key=fields["key"], note=text)
    if "file" in fields:
        return w["note_at_file"].format(file=fields["file"], note=text)
    return text


def _setting_value(values: list[Any], w: dict[str, str]) -> str:
    shown = []
    for value in values:
        if value is None:
            shown.append(w["missing"])
        elif isinstance(value, list):
            shown.append("[" + ", ".join(str(item) for item in value) + "]")
        elif isinstance(value, bool):
            shown.append(w["yes"] if value else w["no"])
        else:
            shown.append(f"{value:g}" if isinstance(value, float) else str(value))
    return " / ".join(shown)


def _versions_section(summary: Summary, w: dict[str, str], names: list[str]) -> list[Block]:
    """The config diff over the runs whose config was read; the others are named, never said not to differ."""
    blocks: list[Block] = [Heading(w["versions_heading"])]
    runs = [run for version in summary.versions for run in version.runs]
    unread = [run.name for run in runs if not run.config_read]
    read = [run.name for run in runs if run.config_read]
    if unread:
        blocks.append(Paragraph(w["config_unread"].format(runs=w["list_sep"].join(unread))))
    if summary.config_diff:
        compared = [name for name in names if name in summary.config_diff[0].values]
        rows = [[row.key, *(_setting_value(row.values[name], w) for name in compared)] for row in summary.config_diff]
        return blocks + [Table([w["col_setting"], *compared], rows)]
    if not unread:
        return blocks + [Paragraph(w["versions_none"])]
    if len(read) > 1:
        blocks.append(Paragraph(w["versions_none_of"].format(runs=w["list_sep"].join(read))))
    return blocks


def _metric_rows(
    table: Any, names: list[str], baseline: str, w: dict[str, str]
) -> tuple[list[str], list[list[str]], list[str]]:
    others = [name for name in names if name != baseline]
    headers = [w["col_step"], *names, *(w["col_trend"].format(version=name, baseline=baseline) for name in others)]
    rows, notes = [], []
    for row in table.rows:
        rows.append(
            [
                str(row.step),
                *(stat(row.values[name], loss) for name in names),
                *(trend(row.vs_baseline[name]) for name in others),
            ]
        )
        for name in names:
            used = [found for found in row.steps_used[name] if found != row.step]
            if used:
                notes.append(
                    w["nearest_note"].format(step=row.step, version=name, used=w["list_sep"].join(map(str, used)))
                )
    return headers, rows, notes


def _loss_section(summary: Summary, w: dict[str, str], names: list[str]) -> list[Block]:
    headers, rows, notes = _metric_rows(summary.train_loss, names, summary.baseline, w)
    blocks: list[Block] = [Heading(w["train_heading"]), Table(headers, rows)]
    return blocks + ([Bullets(notes)] if notes else [])


def _eval_section(summary: Summary, w: dict[str, str], names: list[str]) -> list[Block]:
    table = summary.eval_loss
    if not table.rows:
        return [Heading(w["eval_heading"]), Paragraph(w["eval_none"])]
    headers, rows, notes = _metric_rows(table, names, summary.baseline, w)
    headers += [w["col_gap"].format(version=name) for name in names]
    for cells, row in zip(rows, table.rows):
        cells += [stat(row.gap.values[name], signed_loss) if row.gap else MISSING for name in names]
    blocks: list[Block] = [Heading(w["eval_heading"]), Table(headers, rows), Paragraph(w["gap_note"])]
    return blocks + ([Bullets(notes)] if notes else [])


def _grad_section(summary: Summary, w: dict[str, str], names: list[str]) -> list[Block]:
    grad, baseline = summary.grad_norm, summary.baseline
    edges = [0.0, *grad.phase_bounds, 1.0]
    headers = [w["col_version"]]
    for index, phase in enumerate(PHASES):
        label = w[f"phase_{phase}"]
        headers += [
            w["col_phase_range"].format(
                phase=label, start=f"{edges[index] * 100:g}", end=f"{edges[index + 1] * 100:g}"
            ),
            w["col_phase_median"].format(phase=label),
        ]
    headers += [w["col_sd"], w["col_cv"], w["col_cv_change"].format(baseline=baseline), w["col_clipped"]]
    rows, notes = [], []
    for name in names:
        cells = [name]
        for phase in PHASES:
            stats = grad.phases[phase]
            low, high = stats["min"].values[name], stats["max"].values[name]
            cells += [
                f"{stat(low, number)} – {stat(high, number)}" if low.mean is not None else MISSING,
                stat(stats["median"].values[name], number),
            ]
        cv_change = grad.cv_after_warmup.vs_baseline.get(name)
        cells += [
            stat(grad.sd_after_warmup.values[name], number),
            stat(grad.cv_after_warmup.values[name], number),
            trend(cv_change, signed_number) if cv_change else w["reference"],
            stat(grad.clipped_fraction.values[name], pct),
        ]
        rows.append(cells)
        end = max(phase_steps[0][1] for phase_steps in grad.phase_steps[name].values())
        if (
            grad.phases["warmup"]["min"].values[name].mean is None
            and grad.first_logged[name] is not None
            and name not in grad.no_warmup
            and end >= 1  # the phase holds a training step (steps count from 1)
        ):
            notes.append(w["warmup_empty_note"].format(version=name, end=end, first=grad.first_logged[name]))
    blocks: list[Block] = [Heading(w["grad_heading"]), Table(headers, rows), Paragraph(w["grad_note"])]
    blocks += [Bullets(notes)] if notes else []
    if grad.cv_pairs:
        pair_rows = [
            [pair.reference, pair.other, trend(pair, signed_number), verdict_text(verdict(pair), w)]
            for pair in grad.cv_pairs
        ]
        blocks += [
            Heading(w["pairs_heading"], level=3),
            Table([w["col_reference"], w["col_other"], w["col_change"], w["col_verdict"]], pair_rows),
        ]
    return blocks


def _at_step(values: Summarised, steps: Summarised, name: str, w: dict[str, str]) -> str:
    logged_at = steps.values[name]
    if logged_at.mean is None:  # nothing logged: no step to give either
        return MISSING
    at = (
        step(logged_at.mean) if _same_in_every_run(logged_at) else stat(logged_at, step)
    )  # n is said by the value already
    return f"{stat(values.values[name], lr)} {w['at_step_paren'].format(step=at)}"


def _lr_section(summary: Summary, w: dict[str, str], names: list[str]) -> list[Block]:
    rates = summary.learning_rate
    rows, notes = [], []
    for name in names:
        checks = rates.schedule_check[name]
        rows.append(
            [
                name,
                w["part_sep"].join(sorted({_schedule_text(check, w) for check in checks.values()})),
                _at_step(rates.first_logged, rates.first_logged_step, name, w),
                _at_step(rates.largest_logged, rates.largest_logged_step, name, w),
                _at_step(rates.mid, rates.mid_step, name, w),
                _at_step(rates.last_logged, rates.last_logged_step, name, w),
                _checks_text(checks, w),
            ]
        )
        if rates.warmup_unlogged[name]:
            notes.append(
                w["warmup_unlogged_note"].format(version=name, runs=w["list_sep"].join(rates.warmup_unlogged[name]))
            )
    keys = (
        "col_version",
        "col_schedule",
        "col_first_logged",
        "col_largest_logged",
        "col_mid",
        "col_last_logged",
        "col_check",
    )
    blocks: list[Block] = [
        Heading(w["lr_heading"]),
        Table([w[key] for key in keys], rows),
        Paragraph(w["lr_note"].format(tolerance=pct(rates.tolerance))),
    ]
    return blocks + ([Bullets(notes)] if notes else [])


def _schedule_text(check: Any, w: dict[str, str]) -> str:
    if not check.checked:
        return str(check.schedule) if check.schedule is not None else w["missing"]
    return w["schedule_desc"].format(
        schedule=w[f"schedule_{check.schedule}"],
        warmup=check.warmup_steps,
        peak=lr(check.peak_lr),
        total=check.total_steps,
    )


def _checks_text(checks: dict[str, Any], w: dict[str, str]) -> str:
    """One verdict when the version has one run, every run matches in the same way or all say the same, else one per
    run."""
    conventions = {check.convention for check in checks.values()}
    texts = {run: _check_text(check, w) for run, check in checks.items()}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    if all(check.checked and check.matches for check in checks.values()) and len(conventions) == 1:
        worst = max(checks.values(), key=lambda check: check.max_deviation)
        return _check_text(worst, w)
    return w["part_sep"].join(w["labelled"].format(label=run, text=text) for run, text in texts.items())


def _check_text(check: Any, w: dict[str, str]) -> str:
    if not check.checked:
        return w["check_skipped"].format(reason=w[f"reason_{check.reason}"].format(schedule=check.schedule))
    if check.matches:
        return w["check_ok"].format(deviation=pct(check.max_deviation), convention=w["convention_" + check.convention])
    return w["check_bad"].format(deviation=pct(check.max_deviation), step=check.max_deviation_step)


def _best(names: list[str], compared: int, w: dict[str, str]) -> str:
    """The leading versions, "none (tied)" when all of `compared` versions with a value tie, and — when fewer than two
    have one: nothing was compared, so nothing tied."""
    if compared < 2:
        return MISSING
    return w["list_sep"].join(names) if names else w["tie_none"]


def _advantages_section(summary: Summary, w: dict[str, str], names: list[str]) -> list[Block]:
    matrix, baseline = summary.advantages, summary.baseline
    rows = [_convergence_row(summary, names, baseline, w)]
    labelled = [
        (w["crit_final_train"], matrix.final_train_loss, loss, signed_loss),
        (w["crit_final_eval"], matrix.final_eval_loss, loss, signed_loss),
        (w["crit_stability"], matrix.grad_norm_cv, number, signed_number),
        (w["crit_overfit_gap"], matrix.overfit_gap, signed_loss, signed_loss),
        (w["crit_overfit_ratio"], matrix.overfit_ratio, number, signed_number),
    ]
    labelled += [
        (w["crit_augment"].format(key=key), entry, number, signed_number) for key, entry in matrix.augmentation.items()
    ]
    labelled += [
        (w["crit_eval"].format(key=key), entry, number, signed_number) for key, entry in matrix.evaluation.items()
    ]
    for label, entry, fmt, fmt_diff in labelled:
        cells = [label]
        for name in names:
            comparison = entry.vs_baseline.get(name)
            value = stat(entry.values[name], fmt)
            cells.append(
                value
                if comparison is None or comparison.diff is None
                else w["with_aside"].format(value=value, aside=trend(comparison, fmt_diff))
            )
        best = getattr(entry, "best", None)
        compared = sum(described.mean is not None for described in entry.values.values())
        rows.append(cells + [_best(best, compared, w) if best is not None else w["not_ranked"]])
    return [
        Heading(w["advantages_heading"]),
        Table([w["col_criterion"], *names, w["col_best"]], rows),
        Paragraph(w["advantages_note"]),
    ]


def _convergence_row(summary: Summary, names: list[str], baseline: str, w: dict[str, str]) -> list[str]:
    convergence = summary.advantages.convergence
    cells = [w["crit_convergence"]]
    for name in names:
        window_loss = convergence.window_loss.get(name)
        value = stat(window_loss, loss) if window_loss else MISSING
        pair = convergence.pairs.get(name)
        if name == baseline:
            cells.append(w["with_aside"].format(value=value, aside=w["reference"]))
        elif pair is None:
            cells.append(value)
        else:
            aside = w["part_sep"].join((trend(pair), w["share_lower"].format(share=pct(pair.share_lower))))
            cells.append(w["with_aside"].format(value=value, aside=aside))
    return cells + [_best(convergence.best, len(convergence.window_loss), w)]


def _evaluation_setup_section(summary: Summary, w: dict[str, str], names: list[str]) -> list[Block]:
    if not summary.evaluation_setup:
        return []
    rows = [[row.key, *(_setting_value(row.values[name], w) for name in names)] for row in summary.evaluation_setup]
    return [Heading(w["eval_setup_heading"], level=3), Table([w["col_setting"], *names], rows)]
