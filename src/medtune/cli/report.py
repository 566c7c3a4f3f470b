"""`medtune compare`: the comparison report of experiment versions."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from medtune.report.settings import DEFAULT_LANGUAGE, DEFAULT_PHASE_BOUNDS, LANGUAGES

ReportLanguage = Enum("ReportLanguage", {language: language for language in LANGUAGES}, type=str)
_DEFAULT_LANGUAGE = ReportLanguage(DEFAULT_LANGUAGE)
_PHASES = ",".join(map(str, DEFAULT_PHASE_BOUNDS))


def _numbers(text: str | None, kind: Callable[[str], float], option: str) -> list:
    """Comma-separated numbers; a bad one is a usage error naming the option."""
    if text is None:
        return []
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated numbers", param_hint=option) from None


def compare(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            show_default=False,
            help="Folder for report.md, report.html, charts and summary.json.",
        ),
    ],
    runs: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="RUN",
            show_default=False,
            help="Run folders, swanlog folders, HF output folders / trainer_state.json, or TensorBoard log folders.",
        ),
    ] = None,
    name: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            metavar="VERSION=PATH",
            help="Name a run's version; repeat to give a version several runs (seeds).",
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline", metavar="VERSION", help="Version the others are compared with (default: the first)."
        ),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps",
            metavar="STEP,...",
            help="Steps of the training-loss table, e.g. 100,200,300,400 (default: quarters of training).",
        ),
    ] = None,
    lang: Annotated[ReportLanguage, typer.Option("--lang", help="Report language.")] = _DEFAULT_LANGUAGE,
    phases: Annotated[
        str,
        typer.Option(
            "--phases",
            metavar="WARMUP,EARLY",
            help="Fractions of training that end the warmup and the early phase of the grad-norm analysis.",
        ),
    ] = _PHASES,
) -> None:
    """Compare experiment versions: loss, eval loss, gradient stability, LR schedule, with seeds' statistics."""
    from medtune.report.build import HTML_FILE, MARKDOWN_FILE, SUMMARY_FILE, build_report, parse_name_option

    specs = [*(runs or []), *(parse_name_option(item) for item in name or [])]
    summary = build_report(
        specs,
        baseline=baseline,
        out_dir=out,
        steps=_numbers(steps, int, "--steps") or None,
        lang=lang.value,
        phases=_numbers(phases, float, "--phases"),
    )
    versions = ", ".join(version["name"] for version in summary["versions"])
    typer.echo(
        f"Compared {versions}: report in {out / MARKDOWN_FILE} and {out / HTML_FILE}, numbers in {out / SUMMARY_FILE}"
    )
