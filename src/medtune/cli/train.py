"""`medtune train`, `check` and `ablate`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medtune.cli.options import ConfigArg, OverlayOpt, SetOpt, SkipBadRowsOpt, load_cli_config, processes_option

if TYPE_CHECKING:
    from medtune.config import RunConfig


def train(
    config: ConfigArg,
    set_: SetOpt = None,
    overlay: OverlayOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last checkpoint.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Delete an existing run of the same name first.")
    ] = False,
    skip_bad_rows: SkipBadRowsOpt = False,
    processes: Annotated[
        int,
        processes_option(
            "Train in N processes on this machine, one GPU each, as torchrun --standalone --nproc_per_node N starts "
            "them: data parallel, or FSDP with train.parallelism=fsdp."
        ),
    ] = 1,
) -> None:
    """Fine-tune one run from a config; writes <output_dir>/<run_name>/."""
    cfg = load_cli_config(config, overlay, set_)  # a bad config is one line here, not one per process
    if processes > 1:
        _launch(processes, cfg, config, set_, overlay, resume, overwrite, skip_bad_rows)
        return
    from medtune.train.recipe import run

    run_dir = run(cfg, resume=resume, overwrite=overwrite, skip_bad_rows=skip_bad_rows or None)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, the main process says it once
        typer.echo(f"run complete: {run_dir}")


def _launch(
    processes: int,
    cfg: RunConfig,
    config: Path,
    set_: list[str] | None,
    overlay: list[Path] | None,
    resume: bool,
    overwrite: bool,
    skip_bad_rows: bool,
) -> None:
    """`train --processes N`: the same command in N processes; exits with the first failing one's code. What every
    process would reject alike (the command line, the config, the run folder) is one line here, before they start."""
    import torch

    from medtune.cli.launch import launch_local

    if "WORLD_SIZE" in os.environ:
        raise typer.BadParameter("starts processes itself; under torchrun leave it out", param_hint="'--processes'")
    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise typer.BadParameter(
            f"{processes} processes, one GPU each, but this machine has {torch.cuda.device_count()} GPUs",
            param_hint="'--processes'",
        )
    from medtune.train.distributed import DistContext, check_global_batch
    from medtune.train.recipe import check_run_dir

    check_global_batch(cfg.train.samples_per_step(), DistContext(world_size=processes))
    check_run_dir(cfg, resume, overwrite)
    command = ["train", str(config)]
    command += [part for value in set_ or [] for part in ("--set", value)]
    command += [part for path in overlay or [] for part in ("--overlay", str(path))]
    command += ["--resume"] * resume + ["--overwrite"] * overwrite + ["--skip-bad-rows"] * skip_bad_rows
    code = launch_local(processes, command)
    if code:
        raise typer.Exit(code)


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
        processes_option(
            "Check the run as N processes, one GPU each (torchrun --nproc_per_node N), with the config's "
            "train.parallelism (ddp: each holds the whole model; fsdp: the model is sharded over them); batch and "
            "memory figures are per process."
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
