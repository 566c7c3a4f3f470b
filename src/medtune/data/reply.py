"""The reply format medtune trains and reads back: Qwen3's chat markers, a reply's text, and its split into
think and answer.

Pure string functions (no tokenizer, no model), so that reading data, rendering it for training, and
reading generated replies in chat, generate, eval and serve follow one rule.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_START, THINK_END = "<think>", "</think>"
TURN_START, TURN_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
CHAT_TAGS = (THINK_START, THINK_END, TURN_START, TURN_END, END_OF_TEXT)
"""Every tag of the chat template: only the template writes them (a data field holding one: `data.literal_tags`)."""
THINK_OPEN, THINK_CLOSE = f"{THINK_START}\n", f"\n{THINK_END}\n\n"
"""The think block as Qwen3's template writes it: `<think>\\n` think `\\n</think>\\n\\n` answer."""
ASSISTANT_HEADER = f"{TURN_START}assistant\n"
"""What opens the assistant turn; a generation prompt ends with it."""


def reply_text(think: str, answer: str) -> str:
    """An assistant reply as Qwen3 writes it: the think block (empty when there is no reasoning), then the answer."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{answer}"


@dataclass(frozen=True)
class ReplyParts:
    """A reply split by `split_reply`, with what a strict reader needs to reject an odd shape."""

    think: str
    answer: str
    """Everything outside the think block: what follows `</think>`, after any preamble."""
    opened: bool
    """The reply writes `<think>` (Qwen3 does; a template that opens the block in the prompt leaves it out)."""
    closed: bool
    """The reply writes `</think>`."""
    preamble: str
    """Text before `<think>`, which Qwen3 never writes; it counts as answer, ahead of the text after the block."""


def split_reply(text: str) -> ReplyParts:
    """Think and answer of a reply, by the rule of Qwen3's chat template: the think ends at the first `</think>`.

    - `<think>a</think>b`: think `a`, answer `b`; `<think></think>b` (an empty think): think ``, answer `b`.
    - `a</think>b` (the template opened the block in the prompt, as Qwen3's thinking-only models do): think `a`.
    - `<think>a` (cut at the token limit, or never closed): think `a`, no answer.
    - `b` (no think block): answer `b`.
    - `p<think>a</think>b` (text before `<think>`): think `a`, answer `p`, a blank line, `b`.

    Each part is stripped of surrounding whitespace. As a streamed reply grows, both parts only grow, except
    when a `</think>` arrives in a reply that never wrote `<think>`: what looked like answer becomes think.
    """
    head, closed, after = text.partition(THINK_END)
    preamble, opened, think = head.partition(THINK_START)
    if not opened and closed:
        preamble, think = "", head
    elif not opened:
        preamble, after = "", head
    answer = "\n\n".join(part for part in (preamble.strip(), after.strip()) if part)
    return ReplyParts(think.strip(), answer, bool(opened), bool(closed), preamble.strip())
