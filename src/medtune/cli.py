"""The `medtune` command line. Each command parses its arguments and imports its module lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Fine-tune Qwen3 into a medical-consultation assistant with QLoRA, and compare runs honestly.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
data_app = typer.Typer(help="Inspect training data as the model will see it.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigArg = Annotated[Path, typer.Argument(help="YAML config (may name a `base:` config).", exists=True, dir_okay=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: --set train.lr=1e-4 (repeatable).")]
OverlayOpt = Annotated[Optional[list[Path]], typer.Option("--overlay", help="YAML merged over the config, e.g. configs/tiny.yaml (repeatable).", exists=True, dir_okay=False)]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def load_cli_config(config: Path, overlays: list[Path] | None, overrides: list[str] | None):
    from medtune.config import ConfigError, load_config

    try:
        return load_config(config, overrides or [], overlays=overlays or [])
    except ConfigError as err:
        _fail(str(err))


@app.command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    overlay: OverlayOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete an existing run of the same name first.")] = False,
    skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows", help="Skip invalid rows (counted and listed in data_stats.json).")] = False,
) -> None:
    """Fine-tune one run from a config; writes runs/<run_name>/."""
    from medtune.data.formats import DataError
    from medtune.model.hub import HubError
    from medtune.train.recipe import RunExistsError, run
    from medtune.train.trackers import TrackerError

    cfg = load_cli_config(config, overlay, set_)
    try:
        run_dir = run(cfg, resume=resume, overwrite=overwrite, skip_bad_rows=skip_bad_rows or None)
    except (DataError, RunExistsError, HubError, TrackerError) as err:
        _fail(str(err))
    typer.echo(f"run complete: {run_dir}")


@app.command()
def check(config: ConfigArg, set_: SetOpt = None, overlay: OverlayOpt = None) -> None:
    """Pre-flight check of a run: environment, run folder, data as training encodes it, schedule; exit 1 on errors."""
    from rich.console import Console
    from rich.table import Table

    from medtune.train.preflight import preflight

    findings = preflight(load_cli_config(config, overlay, set_))
    table = Table(title=f"medtune check {config}")
    for column in ("", "check", "finding"):
        table.add_column(column)
    style = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "error": "[red]error[/]"}
    for finding in findings:
        table.add_row(style[finding.level], finding.check, finding.message)
    Console(width=160).print(table)
    if any(finding.level == "error" for finding in findings):
        raise typer.Exit(1)


@data_app.command("stats")
def data_stats(config: ConfigArg, set_: SetOpt = None, overlay: OverlayOpt = None) -> None:
    """Read and encode the data as training would, and print row counts and token lengths."""
    import json

    from medtune.data.prepare import prepare_data
    from medtune.model.load import load_tokenizer

    cfg = load_cli_config(config, overlay, set_)
    stats = prepare_data(cfg, load_tokenizer(cfg.model)).stats
    typer.echo(json.dumps(stats, ensure_ascii=False, indent=2))


@data_app.command("preview")
def data_preview(
    config: ConfigArg,
    set_: SetOpt = None,
    overlay: OverlayOpt = None,
    n: Annotated[int, typer.Option("--n", help="How many training samples to show.")] = 5,
    epoch: Annotated[int, typer.Option("--epoch", help="Which epoch's augmentation draw to show.")] = 0,
) -> None:
    """Show rendered training samples: trained tokens highlighted, masked terms marked, as the model sees them."""
    from medtune.data.preview import preview

    preview(load_cli_config(config, overlay, set_), n=n, epoch=epoch)


@app.command()
def ablate(
    experiment: Annotated[Optional[Path], typer.Argument(help="Experiment YAML (versions x seeds).", dir_okay=False)] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="A count (3 -> 42,43,44) or a list (1,2,3).")] = None,
    runs_per_gpu: Annotated[Optional[int], typer.Option("--runs-per-gpu", min=1, help="Runs at once per GPU (default: the experiment's runs_per_gpu, 1).")] = None,
    set_: SetOpt = None,
) -> None:
    """Train every version x seed that is not complete (resuming interrupted ones), then write the report."""
    from medtune.config import ConfigError
    from medtune.data.formats import DataError
    from medtune.experiment import DEFAULT_EXPERIMENT, parse_seeds, run_experiment
    from medtune.model.hub import HubError
    from medtune.train.trackers import TrackerError

    try:
        run_experiment(experiment or Path(DEFAULT_EXPERIMENT), parse_seeds(seeds) if seeds else None, set_, runs_per_gpu)
    except (ConfigError, DataError, HubError, TrackerError) as err:
        _fail(str(err))


def _register_commands() -> None:
    """Commands that live with their capability; each imports its heavy modules only when it runs."""
    from medtune.infer.commands import chat, eval_command, generate, merge
    from medtune.report.command import compare

    app.command("compare")(compare)
    app.command("chat")(chat)
    app.command("generate")(generate)
    app.command("eval")(eval_command)
    app.command("merge")(merge)


_register_commands()

if __name__ == "__main__":
    app()
