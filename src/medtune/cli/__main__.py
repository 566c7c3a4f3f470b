"""`python -m medtune.cli` (as torchrun and ablate's worker processes start it) is the `medtune` command."""

from medtune.cli import app

app(prog_name="medtune")
