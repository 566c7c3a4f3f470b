"""The report as a list of blocks (headings, paragraphs, tables, images), built from summary.json's data.

The Markdown and HTML writers (render.py) only lay these blocks out, so both files say exactly the same.
Cells are plain text; the writers escape them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medtune.report.analysis import PHASES
from medtune.report.insights import verdict

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


def number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4g}"


def lr(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2e}"


def signed_pct(value: float | None) -> str:
    return MISSING if value is None else f"{value * 100:+.2f}%"


def pct(value: float | None) -> str:
    return MISSING if value is None else f"{value * 100:.1f}%"


def change_pct(value: float | None) -> str:
    return MISSING if value is None else f"{value * 100:.2f}%"


def p_value(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def step(value: float | None) -> str:
    return MISSING if value is None else str(int(value))


def stat(described: dict[str, Any], fmt: Callable[[float | None], str]) -> str:
    """`mean ± ci (n=k)` with several runs, the value alone with one, — with none."""
    if described["mean"] is None:
        return MISSING
    if described["ci95"] is None:
        return fmt(described["mean"])
    if described["ci95"] <= 1e-9 * abs(described["mean"]):  # identical in every run (e.g. a scheduled LR)
        return f"{fmt(described['mean'])} (n={described['n']})"
    return f"{fmt(described['mean'])} ± {fmt(described['ci95'])} (n={described['n']})"


def trend(comparison: dict[str, Any]) -> str:
    """Relative gap to the baseline, with Welch's p (n.s. when not significant) or the noise verdict."""
    if comparison["rel"] is None:
        return MISSING
    text = signed_pct(comparison["rel"])
    if comparison["test"] == "welch":
        text += f" (p={p_value(comparison['p_value'])}{'' if comparison['significant'] else ', n.s.'})"
    elif comparison["test"] == "noise" and not comparison["significant"]:
        text += " (n.s.)"
    return text


PARAM_FORMATS: dict[str, Callable[[Any], str]] = {
    "rel": signed_pct, "change": change_pct, "loss": loss, "base_loss": loss, "value": number, "base_value": number,
    "threshold": number, "gap": number, "ratio": number,
    "p": p_value, "deviation": pct, "fraction": pct, "step": step,
}
"""How each insight parameter is written; the others (names, counts) are written as they are."""


def build_document(summary: dict[str, Any], w: dict[str, str], chart_files: dict[str, str], chart_note: bool) -> list[Block]:
    names = [version["name"] for version in summary["versions"]]
    blocks: list[Block] = [Heading(w["title"].format(versions=", ".join(names)), level=1)]
    random = summary["random_weights"]
    if random["any"]:
        blocks.append(Paragraph(w["random_weights"].format(runs=", ".join(random["runs"])), warning=True))
    if random["unknown"]:
        blocks.append(Paragraph(w["random_unknown"].format(runs=", ".join(random["unknown"]))))
    blocks.append(Paragraph(w["intro"].format(baseline=summary["baseline"])))
    blocks += _runs_section(summary, w)
    blocks += _versions_section(summary, w, names)
    blocks += _loss_section(summary, w, names)
    blocks += _eval_section(summary, w, names)
    blocks += _grad_section(summary, w, names)
    blocks += _lr_section(summary, w, names)
    blocks += _advantages_section(summary, w, names)
    blocks += [Heading(w["insights_heading"]), Bullets([insight_text(insight, w) for insight in summary["insights"]])]
    for chart in CHARTS:
        if chart in chart_files:
            index = next(i for i, block in enumerate(blocks) if isinstance(block, Heading) and block.text == w[_CHART_SECTION[chart]])
            blocks.insert(_section_end(blocks, index), Image(chart_files[chart], w[f"chart_{chart}"]))
    if chart_note:
        blocks.append(Paragraph(w["charts_font_note"]))
    return blocks


_CHART_SECTION = {"loss": "train_heading", "eval_loss": "eval_heading", "grad_norm": "grad_heading", "learning_rate": "lr_heading"}


def _section_end(blocks: list[Block], heading_index: int) -> int:
    for index in range(heading_index + 1, len(blocks)):
        if isinstance(blocks[index], Heading) and blocks[index].level <= blocks[heading_index].level:
            return index
    return len(blocks)


def insight_text(insight: dict[str, Any], w: dict[str, str]) -> str:
    params = {key: PARAM_FORMATS[key](value) if key in PARAM_FORMATS else value for key, value in insight.items()}
    if "direction" in params:
        params["direction"] = w[params["direction"]]
    if "verdict" in params:
        params["verdict"] = verdict_text(insight, w)
    if insight["kind"] == "schedule_bad":
        params["schedule"] = w[f"schedule_{insight['schedule']}"]
    return w[f"insight_{insight['kind']}"].format(**params)


def _runs_section(summary: dict[str, Any], w: dict[str, str]) -> list[Block]:
    flags = {True: w["yes"], False: w["no"], None: w["unknown"]}
    rows = [
        [version["name"], run["name"], run["source"], step(run["last_step"]), step(run["max_steps"]),
         flags[run["random_weights"] if isinstance(run["random_weights"], bool) else None], "; ".join(run["notes"])]
        for version in summary["versions"]
        for run in version["runs"]
    ]
    headers = [w[key] for key in ("col_version", "col_run", "col_source", "col_last_step", "col_planned", "col_random", "col_notes")]
    noise = summary["noise"]
    blocks: list[Block] = [Heading(w["runs_heading"]), Table(headers, rows)]
    method = w["stats_method"].format(confidence_pct=round(summary["confidence"] * 100), alpha=f"{summary['alpha']:g}",
                                      noise_z=f"{summary['noise_z']:.2f}")
    blocks.append(Paragraph(method))
    if noise["single_run_versions"]:
        blocks.append(Paragraph(w["single_run"].format(versions=", ".join(noise["single_run_versions"])), warning=True))
        if noise["from_versions"]:
            blocks.append(Paragraph(w["noise_known"].format(
                versions=", ".join(noise["from_versions"]), train_sd=loss(noise["final_train_loss_sd"]), eval_sd=loss(noise["final_eval_loss_sd"]))))
        else:
            blocks.append(Paragraph(w["noise_unknown"]))
    return blocks


def _config_value(values: list[Any], w: dict[str, str]) -> str:
    shown = []
    for value in values:
        if value is None:
            shown.append(w["missing"])
        elif isinstance(value, list):
            shown.append("[" + ", ".join(str(item) for item in value) + "]")
        else:
            shown.append(str(value))
    return " / ".join(shown)


def _versions_section(summary: dict[str, Any], w: dict[str, str], names: list[str]) -> list[Block]:
    blocks: list[Block] = [Heading(w["versions_heading"])]
    if not summary["config_diff"]:
        return blocks + [Paragraph(w["versions_none"])]
    rows = [[row["key"], *(_config_value(row["values"][name], w) for name in names)] for row in summary["config_diff"]]
    return blocks + [Table([w["col_setting"], *names], rows)]


def _metric_rows(table: dict[str, Any], names: list[str], baseline: str, w: dict[str, str]) -> tuple[list[str], list[list[str]], list[str]]:
    others = [name for name in names if name != baseline]
    headers = [w["col_step"], *names, *(w["col_trend"].format(version=name, baseline=baseline) for name in others)]
    rows, notes = [], []
    for row in table["rows"]:
        rows.append([str(row["step"]), *(stat(row["values"][name], loss) for name in names), *(trend(row["vs_baseline"][name]) for name in others)])
        for name in names:
            used = [found for found in row["steps_used"][name] if found != row["step"]]
            if used:
                notes.append(w["nearest_note"].format(step=row["step"], version=name, used=", ".join(map(str, used))))
    return headers, rows, notes


def _loss_section(summary: dict[str, Any], w: dict[str, str], names: list[str]) -> list[Block]:
    headers, rows, notes = _metric_rows(summary["train_loss"], names, summary["baseline"], w)
    blocks: list[Block] = [Heading(w["train_heading"]), Table(headers, rows)]
    return blocks + ([Bullets(notes)] if notes else [])


def _eval_section(summary: dict[str, Any], w: dict[str, str], names: list[str]) -> list[Block]:
    table = summary["eval_loss"]
    if not table["rows"]:
        return [Heading(w["eval_heading"]), Paragraph(w["eval_none"])]
    headers, rows, notes = _metric_rows(table, names, summary["baseline"], w)
    headers += [w["col_gap"].format(version=name) for name in names]
    for cells, row in zip(rows, table["rows"]):
        cells += [stat(row["gap"]["values"][name], loss) for name in names]
    blocks: list[Block] = [Heading(w["eval_heading"]), Table(headers, rows), Paragraph(w["gap_note"])]
    return blocks + ([Bullets(notes)] if notes else [])


def _grad_section(summary: dict[str, Any], w: dict[str, str], names: list[str]) -> list[Block]:
    grad, baseline = summary["grad_norm"], summary["baseline"]
    edges = [0.0, *grad["phase_bounds"], 1.0]
    headers = [w["col_version"]]
    for index, phase in enumerate(PHASES):
        label = w[f"phase_{phase}"]
        headers += [w["col_phase_range"].format(phase=label, start=f"{edges[index] * 100:g}", end=f"{edges[index + 1] * 100:g}"),
                    w["col_phase_median"].format(phase=label)]
    headers += [w["col_sd"], w["col_cv"], w["col_cv_change"].format(baseline=baseline), w["col_clipped"]]
    rows = []
    for name in names:
        cells = [name]
        for phase in PHASES:
            stats = grad["phases"][phase]
            cells += [f"{stat(stats['min']['values'][name], number)} – {stat(stats['max']['values'][name], number)}",
                      stat(stats["median"]["values"][name], number)]
        cv_change = grad["cv_after_warmup"]["vs_baseline"].get(name)
        cells += [stat(grad["sd_after_warmup"]["values"][name], number), stat(grad["cv_after_warmup"]["values"][name], number),
                  trend(cv_change) if cv_change else w["reference"], stat(grad["clipped_fraction"]["values"][name], pct)]
        rows.append(cells)
    blocks: list[Block] = [Heading(w["grad_heading"]), Table(headers, rows), Paragraph(w["grad_note"])]
    if grad["cv_pairs"]:
        pair_rows = [[pair["reference"], pair["other"], trend(pair), verdict_text(verdict(pair), w)]
                     for pair in grad["cv_pairs"]]
        blocks += [Heading(w["pairs_heading"], level=3),
                   Table([w["col_reference"], w["col_other"], w["col_change"], w["col_verdict"]], pair_rows)]
    return blocks


def verdict_text(judged: dict[str, Any], w: dict[str, str]) -> str:
    """A significance verdict (insights.verdict) as words."""
    p = judged.get("p")
    return w[f"verdict_{judged['verdict']}"].format(p=p_value(p) if p is not None else "", threshold=number(judged.get("threshold")))


def _lr_section(summary: dict[str, Any], w: dict[str, str], names: list[str]) -> list[Block]:
    rates = summary["learning_rate"]
    rows = []
    for name in names:
        checks = rates["schedule_check"][name]
        rows.append([
            name, stat(rates["initial"]["values"][name], lr),
            f"{stat(rates['peak']['values'][name], lr)} ({stat(rates['peak_step']['values'][name], number)})",
            stat(rates["mid"]["values"][name], lr), stat(rates["final"]["values"][name], lr),
            "; ".join(sorted({_schedule_text(check, w) for check in checks.values()})),
            _checks_text(checks, w),
        ])
    headers = [w[key] for key in ("col_version", "col_initial", "col_peak", "col_mid", "col_final", "col_schedule", "col_check")]
    return [Heading(w["lr_heading"]), Table(headers, rows), Paragraph(w["lr_note"].format(tolerance=pct(rates["tolerance"])))]


def _schedule_text(check: dict[str, Any], w: dict[str, str]) -> str:
    if not check["checked"]:
        return str(check["schedule"]) if check["schedule"] is not None else w["missing"]
    return w["schedule_desc"].format(schedule=w[f"schedule_{check['schedule']}"], warmup=check["warmup_steps"],
                                     peak=lr(check["peak_lr"]), total=check["total_steps"])


def _checks_text(checks: dict[str, dict[str, Any]], w: dict[str, str]) -> str:
    """One verdict when every run of the version matches in the same way, else one per run."""
    conventions = {check.get("convention") for check in checks.values()}
    if all(check["checked"] and check["matches"] for check in checks.values()) and len(conventions) == 1:
        worst = max(checks.values(), key=lambda check: check["max_deviation"])
        return _check_text(worst, w)
    return "; ".join(f"{run}: {_check_text(check, w)}" for run, check in checks.items())


def _check_text(check: dict[str, Any], w: dict[str, str]) -> str:
    if not check["checked"]:
        return w["check_skipped"].format(reason=w[f"reason_{check['reason']}"].format(schedule=check["schedule"]))
    if check["matches"]:
        return f"{w['check_ok'].format(deviation=pct(check['max_deviation']))}, {w['convention_' + check['convention']]}"
    return w["check_bad"].format(deviation=pct(check["max_deviation"]), step=check["max_deviation_step"])


def _advantages_section(summary: dict[str, Any], w: dict[str, str], names: list[str]) -> list[Block]:
    matrix, baseline = summary["advantages"], summary["baseline"]
    rows = [_convergence_row(matrix["convergence"], names, baseline, w)]
    labelled = [(w["crit_final_train"], matrix["final_train_loss"], loss), (w["crit_final_eval"], matrix["final_eval_loss"], loss),
                (w["crit_stability"], matrix["grad_norm_cv"], number), (w["crit_overfit_gap"], matrix["overfit_gap"], loss),
                (w["crit_overfit_ratio"], matrix["overfit_ratio"], number)]
    labelled += [(w["crit_augment"].format(key=key), entry, number) for key, entry in matrix["augmentation"].items()]
    labelled += [(w["crit_eval"].format(key=key), entry, number) for key, entry in matrix["evaluation"].items()]
    for label, entry, fmt in labelled:
        cells = [label]
        for name in names:
            comparison = entry["vs_baseline"].get(name)
            value = stat(entry["values"][name], fmt)
            cells.append(value if comparison is None or comparison["rel"] is None else f"{value} ({trend(comparison)})")
        rows.append(cells + [entry.get("best") or MISSING])
    return [Heading(w["advantages_heading"]), Table([w["col_criterion"], *names, w["col_best"]], rows)]


def _convergence_row(convergence: dict[str, Any], names: list[str], baseline: str, w: dict[str, str]) -> list[str]:
    cells = [w["crit_convergence"]]
    for name in names:
        entry = convergence.get(name)
        if name == baseline:
            cells.append(w["reference"])
        elif entry is None:
            cells.append(MISSING)
        else:
            cells.append(f"{trend(entry)} {w['at_step'].format(step=entry['step'])}")
    return cells + [convergence["best"]]
