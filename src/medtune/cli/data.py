"""`medtune data stats` and `medtune data preview`: the training data as the model will see it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from medtune.cli.core import MedtuneCommand, MedtuneGroup
from medtune.cli.options import ConfigArg, OverlayOpt, SetOpt, SkipBadRowsOpt, load_cli_config
from medtune.cli.tables import columns_table, flatten

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text
    from transformers import PreTrainedTokenizerBase

    from medtune.data.augment import MaskedTerm
    from medtune.data.formats import Sample
    from medtune.data.preview import Preview
    from medtune.data.render import Encoded

data_app = typer.Typer(cls=MedtuneGroup, help="Inspect training data as the model will see it.", no_args_is_help=True)

SPLITS = ("train", "validation")


@data_app.command("stats", cls=MedtuneCommand)
def data_stats(
    config: ConfigArg,
    set_: SetOpt = None,
    overlay: OverlayOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the numbers as JSON (as in a run's data_stats.json).")
    ] = False,
    skip_bad_rows: SkipBadRowsOpt = False,
) -> None:
    """Read and encode the data as training would; show rows, bad rows, truncation and token lengths."""
    import json

    from rich.console import Console

    from medtune.data.prepare import prepare_data
    from medtune.model.load import load_tokenizer

    cfg = load_cli_config(config, overlay, set_)
    if skip_bad_rows:
        cfg.data.skip_bad_rows = True
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
    epoch: Annotated[
        int, typer.Option("--epoch", metavar="N", min=0, help="Which epoch's augmentation draw to show.")
    ] = 0,
    masked_only: Annotated[
        bool, typer.Option("--masked-only", help="Show only samples the augmentation masks (v3), skipping the others.")
    ] = False,
    skip_bad_rows: SkipBadRowsOpt = False,
) -> None:
    """Show rendered training samples: trained tokens highlighted, masked terms marked, as the model sees them."""
    from rich.console import Console

    from medtune.data.preview import preview_samples
    from medtune.model.load import load_tokenizer

    cfg = load_cli_config(config, overlay, set_)
    if skip_bad_rows:
        cfg.data.skip_bad_rows = True
    tokenizer = load_tokenizer(cfg.model)
    shown = preview_samples(cfg, tokenizer, n=n, epoch=epoch, masked_only=masked_only)
    show_preview(shown, tokenizer, cfg.data.max_length, Console())
    if masked_only and len(shown.samples) < n:
        typer.echo(f"{len(shown.samples)} of the {shown.epoch_size} samples of epoch {epoch} have masked terms")


def show_stats(stats: dict[str, Any], console) -> None:
    """Two tables (the files read, then each split as encoded) and the rows behind each count, listed by source.

    Generic over the keys, so a count added to data_stats.json shows up here without a change."""
    files = {split: flatten(info) for split, info in stats.get("files", {}).items()}
    splits = {split: flatten(stats[split]) for split in SPLITS if split in stats}
    for title, columns in (
        ("files read", files),
        (f"splits as encoded (max_length {stats.get('max_length', '?')})", splits),
    ):
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


PREVIEW_LEGEND = (
    "dim: prompt (no loss) · cyan: think (loss) · green: answer (loss) · red on white: masked, left out of the loss"
)


def show_preview(shown: Preview, tokenizer: PreTrainedTokenizerBase, max_length: int, console: Console) -> None:
    """One panel per sample: its masked terms, then its tokens coloured by span."""
    from rich.panel import Panel
    from rich.text import Text

    console.print(PREVIEW_LEGEND)
    for number, item in enumerate(shown.samples, start=1):
        encoded = item.encoded
        title = f"{number}. {item.sample.source} · {len(encoded)} tokens · {encoded.trained_tokens()} trained"
        if encoded.truncated:
            title += f" · truncated to {max_length}"
        body = Text()
        if item.augmented is not None:
            body.append("masked terms: ", style="bold")
            terms = ", ".join(f"{t.term} ({t.category}) → {t.replacement} in {t.field}" for t in item.masked_terms)
            body.append(terms + "\n")
            body.append_text(highlight_masks(item.augmented, item.masked_terms))
            body.append("\n")
        body.append_text(token_view(tokenizer, encoded))
        console.print(Panel(body, title=title, title_align="left"))


def highlight_masks(sample: Sample, masked_terms: list[MaskedTerm]) -> Text:
    """The fields of an augmented sample that hold masks, each mask highlighted (red: left out of the loss,
    yellow: kept in it or in the untrained question) and followed by the term it hides, dimmed."""
    from rich.text import Text

    from medtune.data.augment import SAMPLE_FIELDS

    rendered = Text()
    for field in SAMPLE_FIELDS:
        field_terms = sorted((term for term in masked_terms if term.field == field), key=lambda term: term.start)
        if not field_terms:
            continue
        text = getattr(sample, field)
        rendered.append(f"{field}: ", style="bold")
        cursor = 0
        for term in field_terms:
            excluded = (term.start, term.end) in sample.masked.get(field, [])
            rendered.append(text[cursor : term.start])
            rendered.append(term.replacement, style="reverse red" if excluded else "reverse yellow")
            rendered.append(f"«{term.term}»", style="dim")
            cursor = term.end
        rendered.append(text[cursor:] + "\n")
    return rendered


def token_view(tokenizer: PreTrainedTokenizerBase, encoded: Encoded) -> Text:
    """The sample's text coloured by span; a token inside a trained span but without a label is shown as excluded.

    Runs of tokens with one style are appended as one span of whole characters.
    """
    from rich.text import Text

    from medtune.data.preview import token_pieces
    from medtune.data.render import IGNORE_INDEX, SPAN_ANSWER, SPAN_PROMPT, SPAN_THINK

    styles = {SPAN_PROMPT: "dim", SPAN_THINK: "cyan", SPAN_ANSWER: "green"}
    view = Text()
    for piece, label, span in zip(token_pieces(tokenizer, encoded.input_ids), encoded.labels, encoded.span_ids):
        style = styles[span]
        if span != SPAN_PROMPT and label == IGNORE_INDEX:
            style = "bold red on white"
        view.append(piece, style=style)
    return view
