"""Render a Sample with the model's own chat template and build the label mask.

The text comes from `tokenizer.apply_chat_template`, so training sees exactly the layout that inference
will produce; token spans are found from character offsets, never by re-assembling template pieces.
Loss covers the assistant turn from `<think>` through `<|im_end|>` (the reference experiment appended the
pad token instead, so its models never learned to stop).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from medtune.data.formats import Sample

IGNORE_INDEX = -100
SPAN_PROMPT, SPAN_THINK, SPAN_ANSWER = 0, 1, 2
THINK_OPEN, THINK_CLOSE, TURN_END = "<think>\n", "\n</think>\n\n", "<|im_end|>"


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


def render_text(tokenizer: PreTrainedTokenizerBase, sample: Sample) -> str:
    """The full training text: system, user, and the assistant turn with its think block."""
    reply = f"<think>\n{sample.think}\n</think>\n\n{sample.answer}"
    messages = [*prompt_messages(sample), {"role": "assistant", "content": reply}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _char_spans(text: str, sample: Sample) -> tuple[int, int, int, int, int]:
    """Locate (assistant start, think start, think end, answer start, answer end incl. <|im_end|>) in `text`."""
    header = "<|im_start|>assistant\n"
    turn = text.rfind(header)
    if turn < 0:
        raise TemplateError("chat template output has no '<|im_start|>assistant' turn")
    start = turn + len(header)
    if not text.startswith(THINK_OPEN, start):
        raise TemplateError("chat template did not open the assistant turn with '<think>\\n'")
    think_start = start + len(THINK_OPEN)
    think_end = text.find(THINK_CLOSE, think_start)
    answer_start = think_end + len(THINK_CLOSE)
    answer_end = text.find(TURN_END, answer_start)
    if think_end < 0 or answer_end < 0:
        raise TemplateError("chat template output lacks '</think>' or '<|im_end|>' in the assistant turn")
    return start, think_start, think_end, answer_start, answer_end + len(TURN_END)


def _masked_char_ranges(sample: Sample, think_start: int, answer_start: int) -> list[tuple[int, int]]:
    """Map augmentation spans (offsets in the field text) to offsets in the rendered text.

    The Qwen3 template strips leading newlines of think and answer, so offsets shift by what it removed.
    """
    ranges = []
    for field_name, origin in (("think", think_start), ("answer", answer_start)):
        text = getattr(sample, field_name)
        shift = len(text) - len(text.lstrip("\n"))
        ranges += [(origin + s - shift, origin + e - shift) for s, e in sample.masked.get(field_name, [])]
    return ranges


def encode_sample(tokenizer: PreTrainedTokenizerBase, sample: Sample, max_length: int) -> Encoded:
    """Tokenize a sample; labels are -100 outside the assistant turn and on masked spans."""
    text = render_text(tokenizer, sample)
    start, think_start, think_end, answer_start, answer_end = _char_spans(text, sample)
    masked = _masked_char_ranges(sample, think_start, answer_start)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = encoding["input_ids"]
    labels, span_ids = [], []
    for token_id, (begin, end) in zip(input_ids, encoding["offset_mapping"]):
        if begin < start or begin >= answer_end:
            span, label = SPAN_PROMPT, IGNORE_INDEX
        else:
            span, label = (SPAN_THINK if begin < answer_start else SPAN_ANSWER), token_id
            if any(begin < m_end and end > m_start for m_start, m_end in masked):
                label = IGNORE_INDEX
        labels.append(label)
        span_ids.append(span)
    truncated = len(input_ids) > max_length
    if truncated:
        input_ids, labels, span_ids = input_ids[:max_length], labels[:max_length], span_ids[:max_length]
    answer_cut = SPAN_ANSWER not in span_ids
    return Encoded(input_ids, labels, span_ids, truncated=truncated, answer_cut=answer_cut)
