"""The `medtune` app: its commands and the global options."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from medtune.cli.core import MedtuneCommand, MedtuneGroup
from medtune.cli.data import data_app
from medtune.cli.errors import exit_codes_help
from medtune.cli.infer import chat, eval_command, export, generate, merge, serve
from medtune.cli.quiet import VERBOSE_ENV, quiet_libraries
from medtune.cli.report import compare
from medtune.cli.train import ablate, check, train


def _show_version(value: bool) -> None:
    """The version of medtune and of the libraries that decide its numbers, read without importing them."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    if not value:
        return
    libraries = []
    for package in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            libraries.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            libraries.append(f"{package} not installed")
    typer.echo(f"medtune {version('medtune')}\npython {platform.python_version()}, {', '.join(libraries)}")
    raise typer.Exit()


app = typer.Typer(
    cls=MedtuneGroup,
    help="Fine-tune Qwen3 into a medical-consultation assistant with QLoRA, and compare runs honestly.",
    epilog=exit_codes_help(),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def global_options(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            envvar=VERBOSE_ENV,
            show_envvar=True,
            help="Also show what libraries print (warnings, log records).",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Show the versions of medtune and its main libraries, then exit.",
        ),
    ] = False,
) -> None:
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # the processes a command starts (ablate's runs, torchrun workers) inherit it
    else:
        quiet_libraries()


for command in (train, check, ablate, compare, chat, generate, merge, export, serve):
    app.command(cls=MedtuneCommand)(command)
app.command("eval", cls=MedtuneCommand)(eval_command)
app.add_typer(data_app, name="data")
