"""The command classes of every medtune command: one rule for errors, and help that matches parsing."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from medtune.cli.errors import exit_code_for


def _help_matches_parsing(params: list) -> list:
    """Help shows `--resume`, not `--resume <bool>` (a flag takes no value), and `RUN...` without `<list[Path]>`."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        elif isinstance(param, TyperArgument) and param.nargs != 1:
            param.display_type_rich = lambda ctx: None
    return params


class MedtuneCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list:
        return _help_matches_parsing(super().get_params(ctx))


class MedtuneGroup(TyperGroup):
    """Runs every command; medtune's own errors become one line and their exit code, others keep the traceback;
    Ctrl-C exits with 130 after printing what the command says about it."""

    def get_params(self, ctx: Any) -> list:
        return _help_matches_parsing(super().get_params(ctx))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            code = exit_code_for(error)
            if code is None:
                raise
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code) from None
        except KeyboardInterrupt as interrupt:  # training's says which step it saved and how to resume
            if str(interrupt):
                typer.secho(str(interrupt), fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130) from None
