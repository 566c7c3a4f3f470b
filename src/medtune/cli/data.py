"""`medtune data stats` and `medtune data preview`: the training data as the model will see it."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from medtune.cli.core import MedtuneCommand, MedtuneGroup
from medtune.cli.options import ConfigArg, OverlayOpt, SetOpt, load_cli_config
from medtune.cli.tables import columns_table, flatten

data_app = typer.Typer(cls=MedtuneGroup, help="Inspect training data as the model will see it.", no_args_is_help=True)

SPLITS = ("train", "validation")


@data_app.command("stats", cls=MedtuneCommand)
def data_stats(
    config: ConfigArg,
    set_: SetOpt = None,
    overlay: OverlayOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON (as in a run's data_stats.json).")] = False,
) -> None:
    """Read and encode the data as training would; show rows, bad rows, truncation and token lengths."""
    import json

    from rich.console import Console

    from medtune.data.prepare import prepare_data
    from medtune.model.load import load_tokenizer

    cfg = load_cli_config(config, overlay, set_)
    stats = prepare_data(cfg, load_tokenizer(cfg.model)).stats
    if as_json:
        typer.echo(json.dumps(stats, ensure_ascii=False, indent=2))
    else:
        show_stats(stats, Console())


@data_app.command("preview", cls=MedtuneCommand)
def data_preview(
    config: ConfigArg,
    set_: SetOpt = None,
    overlay: OverlayOpt = None,
    n: Annotated[int, typer.Option("--n", metavar="N", min=1, help="How many training samples to show.")] = 5,
    epoch: Annotated[int, typer.Option("--epoch", metavar="N", min=0, help="Which epoch's augmentation draw to show.")] = 0,
    masked_only: Annotated[bool, typer.Option("--masked-only", help="Show only samples the augmentation masks (v3), "
                                                                     "skipping the others.")] = False,
) -> None:
    """Show rendered training samples: trained tokens highlighted, masked terms marked, as the model sees them."""
    from medtune.data.preview import preview
    from medtune.model.load import load_tokenizer

    cfg = load_cli_config(config, overlay, set_)
    preview(cfg, load_tokenizer(cfg.model), n=n, epoch=epoch, masked_only=masked_only)


def show_stats(stats: dict[str, Any], console) -> None:
    """Two tables (the files read, then each split as encoded) and the rows behind each count, listed by source.

    Generic over the keys, so a count added to data_stats.json shows up here without a change."""
    files = {split: flatten(info) for split, info in stats.get("files", {}).items()}
    splits = {split: flatten(stats[split]) for split in SPLITS if split in stats}
    for title, columns in (("files read", files), (f"splits as encoded (max_length {stats.get('max_length', '?')})", splits)):
        console.print(columns_table(title, columns))
        _list_rows(console, columns)


def _list_rows(console, rows_by_split: dict[str, dict[str, Any]]) -> None:
    """The rows behind a count (skipped, truncated, answer cut), so nothing is only a number."""
    from rich.padding import Padding
    from rich.text import Text

    for split, row in rows_by_split.items():
        for name, items in row.items():
            if not isinstance(items, list) or not items:
                continue
            console.print(f"[bold]{split} {name.replace('_', ' ')}[/] ({len(items)}):")
            if all(isinstance(item, str) for item in items):
                console.print(Padding(Text(", ".join(items)), (0, 0, 0, 2)))
                continue
            for item in items:
                bad_row = isinstance(item, dict) and {"source", "field", "reason"} <= item.keys()
                line = f"{item['source']} field {item['field']!r}: {item['reason']}" if bad_row else str(item)
                console.print(Padding(Text(line), (0, 0, 0, 2)))
