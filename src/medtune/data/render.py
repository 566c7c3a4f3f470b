"""Render a Sample with the model's own chat template and build the label mask.

The text comes from `tokenizer.apply_chat_template`, so training sees exactly the layout that inference
will produce; token spans are found from character offsets, never by re-assembling template pieces.
The think goes in as the message's `reasoning_content` where the template reads it (Qwen3's does), so a
literal `</think>` in an answer is not taken for the end of the think; other templates get the think
block written into the content. Loss covers the assistant turn from `<think>` through `<|im_end|>` (the
reference experiment appended the pad token instead, so its models never learned to stop).

A tag of the tokenizer (`<think>`, `<|im_end|>`, ...) written literally inside a field is tokenized as
ordinary characters, never as the tag's token: only the template itself writes control tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from medtune.data.formats import REPLY_FIELDS, Sample
from medtune.data.reply import ASSISTANT_HEADER, THINK_CLOSE, THINK_OPEN, TURN_END, reply_text

IGNORE_INDEX = -100
SPAN_PROMPT, SPAN_THINK, SPAN_ANSWER = 0, 1, 2


class TemplateError(ValueError):
    """The tokenizer's chat template did not produce the Qwen3 assistant layout medtune trains on."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    span_ids: list[int]
    truncated: bool = False
    answer_cut: bool = False
    """True when truncation removed every answer token: such a sample is reported and not trained on."""

    def __len__(self) -> int:
        return len(self.input_ids)

    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def prompt_messages(sample: Sample) -> list[dict[str, str]]:
    return [{"role": "system", "content": sample.system}, {"role": "user", "content": sample.question}]


def assistant_message(tokenizer: PreTrainedTokenizerBase, sample: Sample) -> dict[str, str]:
    """The reply: think as `reasoning_content` where the template reads it, else a think block in the content."""
    if "reasoning_content" in (tokenizer.chat_template or ""):
        return {"role": "assistant", "content": sample.answer, "reasoning_content": sample.think}
    return {"role": "assistant", "content": reply_text(sample.think, sample.answer)}


def render_text(tokenizer: PreTrainedTokenizerBase, sample: Sample) -> str:
    """The full training text: system, user, and the assistant turn with its think block."""
    return tokenizer.apply_chat_template(
        [*prompt_messages(sample), assistant_message(tokenizer, sample)], tokenize=False
    )


@dataclass
class Layout:
    """Character ranges in the rendered text: the trained assistant turn and each field as written."""

    turn: tuple[int, int]
    """From `<think>` through `<|im_end|>`."""
    fields: dict[str, tuple[int, int]]
    """Field name -> (start, end); a prompt field the template rewrote is absent."""
    shifts: dict[str, int]
    """Characters the template stripped from the start of think and answer (mask offsets move by them)."""


def _written(text: str, start: int, value: str, stripped: str, closing: str) -> tuple[int, int] | None:
    """(end, shift) of `value` written at `start` and followed by `closing`, as is or as the template strips it."""
    for candidate in (stripped, value):
        if text.startswith(candidate + closing, start):
            return start + len(candidate), value.find(candidate) if candidate else 0
    return None


def layout(text: str, sample: Sample) -> Layout:
    """Locate the assistant turn and the fields in `text`; TemplateError if it is not the Qwen3 layout."""
    turn = text.rfind(ASSISTANT_HEADER)
    if turn < 0:
        raise TemplateError(f"chat template output has no {ASSISTANT_HEADER.strip()!r} turn")
    start = turn + len(ASSISTANT_HEADER)
    if not text.startswith(THINK_OPEN, start):
        raise TemplateError(f"chat template did not open the assistant turn with {THINK_OPEN!r}")
    think_start = start + len(THINK_OPEN)
    think = _written(text, think_start, sample.think, sample.think.strip("\n"), THINK_CLOSE)
    if think is None:
        raise TemplateError(f"chat template did not write the think followed by {THINK_CLOSE!r}")
    answer_start = think[0] + len(THINK_CLOSE)
    answer = _written(text, answer_start, sample.answer, sample.answer.lstrip("\n"), TURN_END)
    if answer is None:
        raise TemplateError(f"chat template did not write the answer followed by {TURN_END!r}")
    fields = {"think": (think_start, think[0]), "answer": (answer_start, answer[0])}
    prompt = text[:turn]
    for name in ("system", "question"):
        value = getattr(sample, name)
        found = prompt.rfind(value) if value else -1
        if found >= 0:
            fields[name] = (found, found + len(value))
    return Layout((start, answer[0] + len(TURN_END)), fields, {"think": think[1], "answer": answer[1]})


def _masked_char_ranges(sample: Sample, spans: Layout) -> list[tuple[int, int]]:
    """Map augmentation spans (offsets in the field text) to offsets in the rendered text."""
    ranges = []
    for field_name in REPLY_FIELDS:
        origin, shift = spans.fields[field_name][0], spans.shifts[field_name]
        ranges += [(origin + s - shift, origin + e - shift) for s, e in sample.masked.get(field_name, [])]
    return ranges


def _literal_tag_cuts(text: str, spans: Layout, tags: list[str]) -> list[int]:
    """Where to cut the text so that every tag written inside a field is tokenized as ordinary characters.

    A tag is cut after its leading punctuation (`</` + `think>`), where a tokenizer splits such text anyway;
    neither part is a tag, so both are tokenized as text.
    """
    cuts = []
    for begin, end in spans.fields.values():
        for tag in tags:
            at = text.find(tag, begin, end)
            while at >= 0:
                lead = len(tag) - len(tag.lstrip("<|/"))
                cuts.append(at + min(max(lead, 1), len(tag) - 1))
                at = text.find(tag, at + len(tag), end)
    return sorted(set(cuts))


def tokenize_with_offsets(
    tokenizer: PreTrainedTokenizerBase, text: str, cuts: list[int]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`, tokenized piece by piece between the cuts.

    A tokenizer splits its text at every tag before anything else, so tokenizing the pieces between tags
    separately gives the same tokens as tokenizing the whole text; a cut inside a tag makes it plain text.
    """
    input_ids, offsets = [], []
    for begin, end in zip([0, *cuts], [*cuts, len(text)]):
        encoding = tokenizer(text[begin:end], add_special_tokens=False, return_offsets_mapping=True)
        input_ids += encoding["input_ids"]
        offsets += [(begin + first, begin + last) for first, last in encoding["offset_mapping"]]
    return input_ids, offsets


def encode_sample(tokenizer: PreTrainedTokenizerBase, sample: Sample, max_length: int) -> Encoded:
    """Tokenize a sample; labels are -100 outside the assistant turn and on masked spans."""
    text = render_text(tokenizer, sample)
    spans = layout(text, sample)
    masked = _masked_char_ranges(sample, spans)
    start, end = spans.turn
    answer_start = spans.fields["answer"][0]
    input_ids, offsets = tokenize_with_offsets(
        tokenizer, text, _literal_tag_cuts(text, spans, list(tokenizer.get_added_vocab()))
    )
    labels, span_ids = [], []
    for token_id, (begin, last) in zip(input_ids, offsets):
        if begin < start or begin >= end:
            span, label = SPAN_PROMPT, IGNORE_INDEX
        else:
            span, label = (SPAN_THINK if begin < answer_start else SPAN_ANSWER), token_id
            if any(begin < m_end and last > m_start for m_start, m_end in masked):
                label = IGNORE_INDEX
        labels.append(label)
        span_ids.append(span)
    truncated = len(input_ids) > max_length
    if truncated:
        input_ids, labels, span_ids = input_ids[:max_length], labels[:max_length], span_ids[:max_length]
    answer_cut = SPAN_ANSWER not in span_ids
    return Encoded(input_ids, labels, span_ids, truncated=truncated, answer_cut=answer_cut)
