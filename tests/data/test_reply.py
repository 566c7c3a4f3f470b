"""The one rule that splits a reply into think and answer, on every shape a reply or a data row takes, checked
against what Qwen3's own chat template reads from a reply."""

from __future__ import annotations

import re

import pytest

from medtune.data.reply import (
    ASSISTANT_HEADER,
    CHAT_TAGS,
    THINK_END,
    THINK_START,
    TURN_END,
    ReplyParts,
    reply_text,
    split_reply,
)

CASES = {
    "think-then-answer": ("<think>\n想一想\n</think>\n\n多喝水", ReplyParts("想一想", "多喝水", True, True, "")),
    "empty-think": ("<think>\n\n</think>\n\n多喝水", ReplyParts("", "多喝水", True, True, "")),
    "missing-close": ("<think>\n想到一半", ReplyParts("想到一半", "", True, False, "")),
    "no-think-block": ("多喝水", ReplyParts("", "多喝水", False, False, "")),
    "opened-by-the-prompt": ("想一想\n</think>\n\n多喝水", ReplyParts("想一想", "多喝水", False, True, "")),
    "text-before-think": (
        "好的。<think>\n想一想\n</think>\n\n多喝水",
        ReplyParts("想一想", "好的。\n\n多喝水", True, True, "好的。"),
    ),
    "text-before-unclosed-think": ("好的。<think>\n想", ReplyParts("想", "好的。", True, False, "好的。")),
    "second-close-stays-in-answer": ("<think>想</think>答</think>尾", ReplyParts("想", "答</think>尾", True, True, "")),
    "leading-blanks": ("\n \n<think>\n想\n</think>\n\n答\n", ReplyParts("想", "答", True, True, "")),
    "empty-reply": ("", ReplyParts("", "", False, False, "")),
}


@pytest.mark.parametrize("text,expected", list(CASES.values()), ids=list(CASES))
def test_each_shape_of_a_reply_splits_as_documented(text, expected):
    assert split_reply(text) == expected


@pytest.mark.parametrize(
    "think,answer", [("想一想", "多喝水"), ("", "多喝水"), ("第一步\n\n第二步", "答：\n1. 休息\n2. 喝水")]
)
def test_a_reply_written_by_reply_text_splits_back_into_its_parts(think, answer):
    text = reply_text(think, answer)
    assert text == f"{THINK_START}\n{think}\n{THINK_END}\n\n{answer}"
    assert (split_reply(text).think, split_reply(text).answer) == (think, answer)


@pytest.mark.parametrize("case", ["think-then-answer", "empty-think", "opened-by-the-prompt"])
def test_a_closed_think_block_splits_as_qwen3s_chat_template_reads_it(tokenizer, case):
    """Qwen3's template takes the reasoning out of an assistant message's content and writes it back as a
    think block: the turn it writes is the reply rebuilt from medtune's split. (The template keeps blanks at
    the end of the answer, which medtune strips; it drops text before `<think>`, which medtune keeps.)"""
    text, _ = CASES[case]
    messages = [{"role": "user", "content": "头疼"}, {"role": "assistant", "content": text}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    parts = split_reply(text)
    assert rendered.endswith(f"{ASSISTANT_HEADER}{reply_text(parts.think, parts.answer)}{TURN_END}\n")


def test_the_tags_are_the_tokenizers_own_tokens(tokenizer):
    for tag in CHAT_TAGS:
        assert tokenizer.convert_tokens_to_ids(tag) != tokenizer.unk_token_id and len(tokenizer.tokenize(tag)) == 1, tag


@pytest.mark.parametrize("case", ["think-then-answer", "text-before-think", "leading-blanks"])
def test_both_parts_only_grow_as_a_reply_streams_in_whole_tags(case):
    """Streaming (chat, serve) prints what each part adds; a tag arrives whole, as one token."""
    text, expected = CASES[case]
    inside_a_tag = {
        at.start() + offset
        for tag in (THINK_START, THINK_END)
        for at in re.finditer(re.escape(tag), text)
        for offset in range(1, len(tag))
    }
    previous = ReplyParts("", "", False, False, "")
    for cut in sorted(set(range(len(text) + 1)) - inside_a_tag):
        parts = split_reply(text[:cut])
        assert parts.think.startswith(previous.think) and parts.answer.startswith(previous.answer), text[:cut]
        previous = parts
    assert previous == expected
