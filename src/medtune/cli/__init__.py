"""The `medtune` command line. typer lives only in this package: each command parses its arguments and calls
library functions, imported lazily, that take plain arguments."""

from medtune.cli.main import app

__all__ = ["app"]
