"""The command classes of every medtune command: one rule for errors, and help that matches parsing."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, NoReturn

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from medtune.cli.errors import INTERRUPTED, exit_code_for, usage_error_line


def _help_matches_parsing(params: list) -> list:
    """Help shows `--resume`, not `--resume <bool>` (a flag takes no value), and `RUN...` without `<list[Path]>`."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        elif isinstance(param, TyperArgument) and param.nargs != 1:
            param.display_type_rich = lambda ctx: None
    return params


class _MedtuneParsing:
    """What parsing shares between a command and a group of commands (such as `medtune data`)."""

    def get_params(self, ctx: Any) -> list:
        return _help_matches_parsing(super().get_params(ctx))

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Names the command in its parsing errors: click raises some (`--set` without its value) without it."""
        try:
            return super().parse_args(ctx, args)
        except Exception as error:
            if getattr(error, "ctx", False) is None:
                error.ctx = ctx
            raise


class MedtuneCommand(_MedtuneParsing, TyperCommand):
    pass


class MedtuneGroup(_MedtuneParsing, TyperGroup):
    """Runs every command; medtune's own errors and command-line errors become one line and their exit code, others
    keep the traceback; an interruption (Ctrl-C, SIGTERM during training) exits with 130 after printing what the
    command says about it; a closed stdout (`medtune ... | head`) ends the command quietly with 0."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        """Parsing `medtune`'s own options (a subcommand's are parsed within `invoke`)."""
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:  # --version or --help into a closed pipe
            _exit_quietly()
        except Exception as error:
            _exit_on_usage_error(error)
            raise

    def invoke(self, ctx: Any) -> Any:
        _consoles_raise_broken_pipe()
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # output still buffered would meet a closed pipe after this handler
            return result
        except BrokenPipeError:
            _exit_quietly()
        except Exception as error:
            _exit_on_usage_error(error)
            code = exit_code_for(error)
            if code is None:
                raise
            _fail(str(error), code)
        except KeyboardInterrupt as interrupt:  # training's says which step it saved and how to resume
            if str(interrupt):
                typer.secho(str(interrupt), fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(INTERRUPTED) from None


def _exit_on_usage_error(error: Exception) -> None:
    """A bad command line is one line and exit 2 (click's code), not typer's boxed usage message."""
    line = usage_error_line(error)
    if line is not None:
        _fail(line, getattr(error, "exit_code", 2))


def _consoles_raise_broken_pipe() -> None:
    """rich ends the process itself, with exit 1, when a console meets a closed stdout (`Console.on_broken_pipe`, a
    hook meant to be overridden); medtune's consoles raise BrokenPipeError instead, so the command ends as every
    command does on a closed stdout (`_exit_quietly`)."""
    from rich.console import Console

    def raise_broken_pipe(console: Console) -> NoReturn:
        console.quiet = True  # the reader is gone: nothing more is written
        raise BrokenPipeError

    Console.on_broken_pipe = raise_broken_pipe


def _exit_quietly() -> NoReturn:
    """The reader of stdout went away (`medtune data preview ... | head`): it has what it wanted, so exit 0 without a
    word, as other command-line tools do. stdout goes to /dev/null, so Python's last flush at exit cannot fail again."""
    with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor (a test's) has nothing to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(0) from None


def _fail(message: str, code: int) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code) from None
