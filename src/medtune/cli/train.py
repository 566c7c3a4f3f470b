"""`medtune train`, `check` and `ablate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medtune.cli.options import ConfigArg, OverlayOpt, SetOpt, SkipBadRowsOpt, load_cli_config


def train(
    config: ConfigArg,
    set_: SetOpt = None,
    overlay: OverlayOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last checkpoint.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Delete an existing run of the same name first.")
    ] = False,
    skip_bad_rows: SkipBadRowsOpt = False,
) -> None:
    """Fine-tune one run from a config; writes <output_dir>/<run_name>/."""
    from medtune.train.recipe import run

    run_dir = run(
        load_cli_config(config, overlay, set_), resume=resume, overwrite=overwrite, skip_bad_rows=skip_bad_rows or None
    )
    typer.echo(f"run complete: {run_dir}")


def _memory_size(value: str | None) -> str | None:
    from medtune.config import parse_memory_size

    if value is not None:
        try:
            parse_memory_size(value)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
    return value


def check(
    config: ConfigArg,
    set_: SetOpt = None,
    overlay: OverlayOpt = None,
    skip_bad_rows: SkipBadRowsOpt = False,
    gpu_memory: Annotated[
        str | None,
        typer.Option(
            "--gpu-memory",
            metavar="SIZE",
            callback=_memory_size,
            help="Predict the training peak on a GPU of this size (24GiB, 8GB) and plan the levers, without loading "
            "weights; "
            "default: this machine's GPU, if any.",
        ),
    ] = None,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            metavar="N",
            min=1,
            help="Check the run as N processes, one GPU each (torchrun --nproc_per_node N), with the config's "
            "train.parallelism (ddp: each holds the whole model; fsdp: the model is sharded over them); batch and "
            "memory figures are per process.",
        ),
    ] = 1,
) -> None:
    """Pre-flight check of a run: environment, run folder, data as training encodes it, schedule, GPU memory plan;
    exit 1 on errors."""
    from rich.console import Console
    from rich.table import Table

    from medtune.train.preflight import preflight

    findings = preflight(
        load_cli_config(config, overlay, set_), skip_bad_rows=skip_bad_rows, gpu_memory=gpu_memory, processes=processes
    )
    table = Table(title=f"medtune check {config}")
    for column in ("", "check", "finding"):
        table.add_column(column)
    style = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "error": "[red]error[/]"}
    for finding in findings:
        table.add_row(style[finding.level], finding.check, finding.message)
    Console(width=160).print(table)
    if any(finding.level == "error" for finding in findings):
        raise typer.Exit(1)


def ablate(
    experiment: Annotated[
        Path | None,
        typer.Argument(
            help="Experiment YAML (versions x seeds); default: experiments/quickstart.yaml of the project, looked for "
            "in the working folder, its parents, then the checkout medtune was installed from.",
            metavar="EXPERIMENT",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            metavar="N|LIST",
            help="A count (3: three seeds counting up from train.seed's default) or a list (1,2,3).",
        ),
    ] = None,
    runs_per_gpu: Annotated[
        int | None,
        typer.Option(
            "--runs-per-gpu",
            metavar="N",
            min=1,
            help="Runs at once per GPU (default: the experiment's runs_per_gpu, 1).",
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Train every version x seed that is not complete (resuming interrupted ones), then write the report."""
    from medtune.ablate import find_default_experiment, parse_seeds, run_experiment

    run_experiment(experiment or find_default_experiment(), parse_seeds(seeds) if seeds else None, set_, runs_per_gpu)
