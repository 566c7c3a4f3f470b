"""`medtune data preview`: training samples as the model sees them, with the loss mask made visible."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.text import Text
from transformers import PreTrainedTokenizerBase

from medtune.config import RunConfig
from medtune.data.augment import highlight_masks
from medtune.data.batching import step_positions
from medtune.data.prepare import prepare_data
from medtune.data.render import IGNORE_INDEX, SPAN_ANSWER, SPAN_PROMPT, SPAN_THINK, Encoded

SPAN_STYLES = {SPAN_PROMPT: "dim", SPAN_THINK: "cyan", SPAN_ANSWER: "green"}
LEGEND = "dim: prompt (no loss) · cyan: think (loss) · green: answer (loss) · red on white: masked, left out of the loss"


def token_view(tokenizer: PreTrainedTokenizerBase, encoded: Encoded) -> Text:
    """Each token coloured by span; a token inside a trained span but without a label is shown as excluded."""
    view = Text()
    for token_id, label, span in zip(encoded.input_ids, encoded.labels, encoded.span_ids):
        style = SPAN_STYLES[span]
        if span != SPAN_PROMPT and label == IGNORE_INDEX:
            style = "bold red on white"
        view.append(tokenizer.decode([token_id]), style=style)
    return view


def preview(cfg: RunConfig, n: int, epoch: int, console: Console | None = None) -> None:
    """Show the first `n` samples of the given epoch in training order, augmentation applied as in training."""
    from medtune.model.load import load_tokenizer

    console = console or Console()
    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tokenizer)
    train = data.train
    console.print(LEGEND)
    first = epoch * len(train)
    for number, (draw_epoch, index) in enumerate(step_positions(first, min(n, len(train)), len(train), cfg.train.seed), 1):
        encoded, masked_terms = train.encode_at(draw_epoch, index)
        sample = train.samples[index]
        title = f"{number}. {sample.source} · {len(encoded)} tokens · {encoded.trained_tokens()} trained"
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
