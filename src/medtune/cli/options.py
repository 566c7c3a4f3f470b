"""Arguments and options shared by several commands, with the metavars help shows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medtune.infer.decoding import Decoding

ConfigArg = Annotated[
    Path,
    typer.Argument(
        help="YAML config (may name a `base:` config).",
        metavar="CONFIG",
        exists=True,
        dir_okay=False,
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="Override a key, e.g. --set train.lr=1e-4 (repeatable)."),
]
OverlayOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--overlay",
        metavar="FILE",
        exists=True,
        dir_okay=False,
        help="YAML merged over the config, e.g. configs/tiny.yaml (repeatable).",
    ),
]
SkipBadRowsOpt = Annotated[
    bool,
    typer.Option(
        "--skip-bad-rows",
        help="Skip invalid rows (counted and listed in data_stats.json) instead of stopping at the first.",
    ),
]


def processes_option(help: str) -> Any:
    """`--processes N` (train, check): how many processes, one GPU each; the help says what the command does with
    them."""
    return typer.Option("--processes", metavar="N", min=1, help=help)


RunArg = Annotated[
    Path,
    typer.Argument(help="Run folder (uses its adapter/), or an adapter folder.", metavar="RUN", show_default=False),
]
CheckpointOpt = Annotated[
    int | None,
    typer.Option("--checkpoint", metavar="STEP", min=1, help="Use checkpoints/step-STEP instead of the final adapter."),
]
MaxNewTokensOpt = Annotated[
    int, typer.Option("--max-new-tokens", metavar="N", min=1, help="Cut each reply after N tokens.")
]
_SAMPLING = f"T {Decoding.temperature}, top-p {Decoding.top_p}, top-k {Decoding.top_k}"
GreedyOpt = Annotated[
    bool, typer.Option("--greedy", help=f"Greedy decoding instead of Qwen3's thinking-mode sampling ({_SAMPLING}).")
]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", metavar="N", min=1, help="Questions generated together (left-padded).")
]


def load_cli_config(config: Path, overlays: list[Path] | None, overrides: list[str] | None):
    """The run config of a command's CONFIG, --overlay and --set."""
    from medtune.config import load_config

    return load_config(config, overrides or [], overlays=overlays or [])
