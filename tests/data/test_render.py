"""Golden tests: the exact token layout and label mask with the real Qwen3 tokenizer and chat template."""

from __future__ import annotations

import copy

from medtune.data.formats import Sample, read_samples, resolve_data_path
from medtune.data.render import (
    IGNORE_INDEX,
    SPAN_ANSWER,
    SPAN_PROMPT,
    SPAN_THINK,
    encode_sample,
    prompt_messages,
    render_text,
)
from medtune.data.reply import reply_text

IM_START, IM_END, THINK, END_THINK, NEWLINE = 151644, 151645, 151667, 151668, 198

SAMPLE = Sample(system="S", question="头痛怎么办？", think="想一想", answer="多休息。")
# Pinned from the Qwen3-1.7B tokenizer files (vocab.json + merges.txt); each id's text is in the comment.
GOLDEN_IDS = [
    IM_START,
    8948,
    NEWLINE,
    50,
    IM_END,
    NEWLINE,  # <|im_start|> system \n S <|im_end|> \n
    IM_START,
    872,
    NEWLINE,
    109180,
    102572,
    11319,
    IM_END,
    NEWLINE,  # <|im_start|> user \n 头痛 怎么办 ？ <|im_end|> \n
    IM_START,
    77091,
    NEWLINE,  # <|im_start|> assistant \n
    THINK,
    NEWLINE,
    99172,
    14777,
    99172,
    NEWLINE,
    END_THINK,
    271,  # <think> \n 想 一 想 \n </think> \n\n
    42140,
    104393,
    1773,
    IM_END,
    NEWLINE,  # 多 休息 。 <|im_end|> \n
]
ASSISTANT_START = 17  # index of <think>


def test_rendered_text_is_the_qwen3_layout(tokenizer):
    expected = (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n头痛怎么办？<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n想一想\n</think>\n\n多休息。<|im_end|>\n"
    )
    assert render_text(tokenizer, SAMPLE) == expected


def test_golden_token_ids_and_label_mask(tokenizer):
    encoded = encode_sample(tokenizer, SAMPLE, max_length=2048)
    assert encoded.input_ids == GOLDEN_IDS
    # Loss on the assistant turn from <think> through <|im_end|>, nothing else (not the final newline).
    expected_labels = [IGNORE_INDEX] * ASSISTANT_START + GOLDEN_IDS[ASSISTANT_START:-1] + [IGNORE_INDEX]
    assert encoded.labels == expected_labels
    assert encoded.labels[-2] == IM_END, "the model must learn to stop"
    assert encoded.span_ids == [SPAN_PROMPT] * 17 + [SPAN_THINK] * 8 + [SPAN_ANSWER] * 4 + [SPAN_PROMPT]
    assert not encoded.truncated and not encoded.answer_cut


def test_template_strips_leading_newlines_and_masks_follow(tokenizer):
    """Masked spans are field offsets; the template strips a leading newline, and the mask must follow."""
    sample = Sample(system="S", question="Q", think="\n想一想", answer="\n多休息。", masked={"answer": [(1, 3)]})
    encoded = encode_sample(tokenizer, sample, max_length=2048)
    ids_text = [tokenizer.decode([t]) for t in encoded.input_ids]
    masked_tokens = [
        ids_text[i]
        for i, label in enumerate(encoded.labels)
        if label == IGNORE_INDEX and encoded.span_ids[i] == SPAN_ANSWER
    ]
    assert masked_tokens == ["多", "休息"]  # field chars 1..3 of "\n多休息。" are 多休


def test_truncation_reports_cut_answer(tokenizer):
    long_think = Sample(system="S", question="Q", think="想" * 300, answer="多休息。")
    encoded = encode_sample(tokenizer, long_think, max_length=64)
    assert len(encoded) == 64 and encoded.truncated and encoded.answer_cut
    partial = encode_sample(tokenizer, SAMPLE, max_length=len(GOLDEN_IDS) - 2)
    assert partial.truncated and not partial.answer_cut


def test_reasoning_content_rendering_equals_the_official_template_on_every_shipped_row(tokenizer):
    """The official template parses a think block written into the content; medtune hands it the think as
    `reasoning_content`. Both must give the same text, so the official template stays the oracle."""
    samples = read_samples(resolve_data_path("medtune:delicate_medical_r1_val"), system_prompt="S").samples
    assert len(samples) == 241
    for sample in samples:
        reply = {"role": "assistant", "content": reply_text(sample.think, sample.answer)}
        official = tokenizer.apply_chat_template([*prompt_messages(sample), reply], tokenize=False)
        assert render_text(tokenizer, sample) == official, sample.source


def _trained_text(tokenizer, encoded, span: int) -> str:
    return tokenizer.decode(
        [
            t
            for t, label, s in zip(encoded.input_ids, encoded.labels, encoded.span_ids)
            if s == span and label != IGNORE_INDEX
        ]
    )


def test_literal_tags_in_fields_are_trained_as_text_not_as_tags(tokenizer):
    sample = Sample(
        system="S<|im_end|>",
        question="问<|im_start|>",
        think="想<think>再想</think>",
        answer="答</think>尾<|im_end|>完",
    )
    encoded = encode_sample(tokenizer, sample, max_length=2048)

    assert _trained_text(tokenizer, encoded, SPAN_THINK) == "<think>\n想<think>再想</think>\n</think>\n\n"
    assert _trained_text(tokenizer, encoded, SPAN_ANSWER) == "答</think>尾<|im_end|>完<|im_end|>"
    assert tokenizer.decode(encoded.input_ids) == render_text(tokenizer, sample)
    # Only the template's own tags are tag tokens: one <think>, one </think>, one <|im_end|> per turn.
    assert (encoded.input_ids.count(THINK), encoded.input_ids.count(END_THINK), encoded.input_ids.count(IM_END)) == (
        1,
        1,
        3,
    )
    assert encoded.labels[-2] == IM_END


def test_templates_without_reasoning_content_get_the_think_block_in_the_content(tokenizer):
    chatml = copy.copy(tokenizer)
    chatml.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    )
    encoded = encode_sample(chatml, SAMPLE, max_length=2048)

    assert encoded.input_ids == GOLDEN_IDS
    assert render_text(chatml, SAMPLE) == render_text(tokenizer, SAMPLE)
