"""`medtune compare`: the typer command (registered in cli.py as `app.command("compare")(compare)`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def compare(
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for report.md, report.html, charts and summary.json.")],
    runs: Annotated[
        list[Path] | None,
        typer.Argument(help="Run folders, swanlog folders, HF output folders / trainer_state.json, or TensorBoard log folders."),
    ] = None,
    name: Annotated[list[str] | None, typer.Option("--name", help="version=path; repeat to give a version several runs (seeds).")] = None,
    baseline: Annotated[str | None, typer.Option(help="Version the others are compared with (default: the first).")] = None,
    steps: Annotated[str | None, typer.Option(help="Steps of the training-loss table, e.g. 100,200,300,400 (default: quarters of training).")] = None,
    lang: Annotated[str, typer.Option(help="Report language: en or zh.")] = "en",
    phases: Annotated[str, typer.Option(help="Fractions of training that end the warmup and the early phase of the grad-norm analysis.")] = "0.1,0.5",
) -> None:
    """Compare experiment versions: loss, eval loss, gradient stability, LR schedule, with seeds' statistics."""
    from medtune.report.build import build_report, parse_name_option
    from medtune.report.runs import ReportError

    try:
        specs = [*(runs or []), *(parse_name_option(item) for item in name or [])]
        summary = build_report(specs, baseline=baseline, out_dir=out, steps=_numbers(steps, int, "--steps") or None,
                               lang=lang, phases=_numbers(phases, float, "--phases"))
    except ReportError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    versions = ", ".join(version["name"] for version in summary["versions"])
    typer.echo(f"Compared {versions}: report in {out / 'report.md'} and {out / 'report.html'}, numbers in {out / 'summary.json'}")


def _numbers(text: str | None, kind: type, option: str) -> list:
    from medtune.report.runs import ReportError

    if text is None:
        return []
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ReportError(f"{option} {text!r}: expected comma-separated numbers") from None
