"""`medtune data preview`: training samples as the model sees them, with the loss mask made visible."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.text import Text
from transformers import PreTrainedTokenizerBase

from medtune.config import ConfigError, RunConfig
from medtune.data.augment import SAMPLE_FIELDS, MaskedTerm
from medtune.data.batching import step_positions
from medtune.data.formats import Sample
from medtune.data.prepare import prepare_data
from medtune.data.render import IGNORE_INDEX, SPAN_ANSWER, SPAN_PROMPT, SPAN_THINK, Encoded

SPAN_STYLES = {SPAN_PROMPT: "dim", SPAN_THINK: "cyan", SPAN_ANSWER: "green"}
LEGEND = "dim: prompt (no loss) · cyan: think (loss) · green: answer (loss) · red on white: masked, left out of the loss"


def highlight_masks(sample: Sample, masked_terms: list[MaskedTerm]) -> Text:
    """The fields of an augmented sample that hold masks, each mask highlighted (red: left out of the loss,
    yellow: kept in it or in the untrained question) and followed by the term it hides, dimmed."""
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


def token_pieces(tokenizer: PreTrainedTokenizerBase, input_ids: list[int]) -> list[str]:
    """The text each token adds, decoded incrementally (as streaming detokenizers do).

    A character whose UTF-8 bytes are split across tokens is given whole to the token that completes it,
    so no piece shows a half character as `\ufffd`; the pieces join to the decoded sequence.
    """
    pieces, prefix_start, read_start = [], 0, 0
    for end in range(1, len(input_ids) + 1):
        done = tokenizer.decode(input_ids[prefix_start:read_start])
        text = tokenizer.decode(input_ids[prefix_start:end])
        if text.endswith("\ufffd") and end < len(input_ids):
            pieces.append("")  # an incomplete character: wait for the token that completes it
            continue
        pieces.append(text[len(done):])
        prefix_start, read_start = read_start, end
    return pieces


def token_view(tokenizer: PreTrainedTokenizerBase, encoded: Encoded) -> Text:
    """The sample's text coloured by span; a token inside a trained span but without a label is shown as excluded.

    Runs of tokens with one style are appended as one span of whole characters.
    """
    view = Text()
    for piece, label, span in zip(token_pieces(tokenizer, encoded.input_ids), encoded.labels, encoded.span_ids):
        style = SPAN_STYLES[span]
        if span != SPAN_PROMPT and label == IGNORE_INDEX:
            style = "bold red on white"
        view.append(piece, style=style)
    return view


def preview(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, n: int, epoch: int, console: Console | None = None,
            masked_only: bool = False) -> None:
    """Show the first `n` samples of the given epoch in training order, augmentation applied as in training.

    With `masked_only`, the first `n` samples of the epoch that the augmentation masks (v3 previews): the
    others are skipped, so the masks can be checked without paging through unmasked samples.

    `tokenizer` is the run's (`model.load.load_tokenizer(cfg.model)`), loaded by the caller.

    Raises:
        ConfigError: `masked_only` while the augmentation is off (nothing could ever be shown).
    """
    if masked_only and not cfg.augment.enabled:
        raise ConfigError("masked_only previews the augmentation's masks, but augment.enabled is false in this config")
    console = console or Console()
    train = prepare_data(cfg, tokenizer).train
    console.print(LEGEND)
    shown = 0
    for draw_epoch, index in step_positions(epoch * len(train), len(train), len(train), cfg.train.seed):
        if shown == n:
            break
        encoded, masked_terms = train.encode_at(draw_epoch, index)
        if masked_only and not masked_terms:
            continue
        shown += 1
        sample = train.samples[index]
        title = f"{shown}. {sample.source} · {len(encoded)} tokens · {encoded.trained_tokens()} trained"
        if encoded.truncated:
            title += f" · truncated to {cfg.data.max_length}"
        body = Text()
        if masked_terms:
            augmented, _ = train.augment(sample, draw_epoch, index)
            body.append("masked terms: ", style="bold")
            body.append(", ".join(f"{t.term} ({t.category}) → {t.replacement} in {t.field}" for t in masked_terms) + "\n")
            body.append_text(highlight_masks(augmented, masked_terms))
            body.append("\n")
        body.append_text(token_view(tokenizer, encoded))
        console.print(Panel(body, title=title, title_align="left"))
    if masked_only and shown < n:
        console.print(f"{shown} of the {len(train)} samples of epoch {epoch} have masked terms")
