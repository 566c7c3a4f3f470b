"""Metric functions on hand-checked examples; the arithmetic is written out in the comments."""

from __future__ import annotations

import math
import random

import pytest

from medtune.data.lexicon import parse_lexicon
from medtune.infer.generation import Reply
from medtune.infer.scores import corpus_bleu, found_terms, lcs_length, reply_scores, rouge_l, score_tokens, think_format


def test_tokens_are_characters_except_latin_and_digit_runs():
    assert score_tokens("头痛3天, 用CT 10mg") == ["头", "痛", "3", "天", ",", "用", "CT", "10mg"]


def test_bleu4_by_hand():
    # hyp 请 多 喝 水 啊 (5 tokens), ref 请 多 喝 水 多 休 息 吧 (8 tokens)
    # 1-grams: 请 多 喝 水 match, 啊 not -> 4/5;  2-grams: 请多 多喝 喝水 | 水啊 -> 3/4
    # 3-grams: 请多喝 多喝水 | 喝水啊 -> 2/3;     4-grams: 请多喝水 | 多喝水啊 -> 1/2
    # geometric mean (4/5 * 3/4 * 2/3 * 1/2)^(1/4) = 0.2^(1/4) = 0.668740; brevity exp(1 - 8/5) = 0.548812
    assert corpus_bleu(["请多喝水啊"], ["请多喝水多休息吧"]) == pytest.approx(0.367012, abs=1e-6)
    assert corpus_bleu(["头痛发热"], ["头痛发热"]) == pytest.approx(1.0)


def test_bleu4_pools_counts_over_the_corpus():
    # adding the exact pair 头痛发热 (4/4, 3/3, 2/2, 1/1) to the pair above pools the counts:
    # 8/9, 6/7, 4/5, 2/3; lengths 9 vs 12 -> brevity exp(1 - 12/9); not the mean of 0.367 and 1.0
    expected = math.exp(1 - 12 / 9) * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert expected == pytest.approx(0.572084, abs=1e-6)
    assert corpus_bleu(["请多喝水啊", "头痛发热"], ["请多喝水多休息吧", "头痛发热"]) == pytest.approx(expected)


def test_bleu4_clips_repeated_ngrams_and_is_zero_without_a_4gram_match():
    # hyp 的x5, ref 的x4: clipped matches 4/5, 3/4, 2/3, 1/2; hyp longer -> no brevity penalty
    assert corpus_bleu(["的的的的的"], ["的的的的"]) == pytest.approx(0.2**0.25)
    # 我头痛了 vs 我头痛得很: 4-gram 我头痛了 has no match -> 0 (no smoothing)
    assert corpus_bleu(["我头痛了"], ["我头痛得很"]) == 0.0
    assert corpus_bleu([""], ["头痛"]) == 0.0


def test_rouge_l_by_hand():
    # LCS(多喝水休息, 请多喝水多休息) = 多喝水休息 = 5: P 5/5, R 5/7, F1 = 2*(5/7)/(1+5/7) = 10/12
    assert rouge_l("多喝水休息", "请多喝水多休息") == pytest.approx(10 / 12)
    # LCS(休息喝水, 喝水休息) = 2 (休息 or 喝水): P = R = 1/2
    assert rouge_l("休息喝水", "喝水休息") == pytest.approx(0.5)
    assert rouge_l("感冒", "骨折") == 0.0
    assert rouge_l("", "骨折") == 0.0


def test_bit_parallel_lcs_agrees_with_the_textbook_table():
    def table_lcs(a, b):
        rows = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                rows[i + 1][j + 1] = rows[i][j] + 1 if x == y else max(rows[i][j + 1], rows[i + 1][j])
        return rows[-1][-1]

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("头痛发热") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("头痛发热") for _ in range(rng.randint(0, 40))]
        assert lcs_length(a, b) == table_lcs(a, b)


@pytest.mark.parametrize(
    ("text", "finish", "present", "closed", "non_empty", "stopped"),
    [
        ("<think>\n想一想\n</think>\n\n多喝水", "stop", True, True, True, True),
        ("多喝水", "stop", False, False, False, True),  # no think block
        ("想一想\n</think>\n\n多喝水", "stop", False, False, False, True),  # closed but never opened
        ("<think>\n想一想，多喝水", "stop", True, False, True, True),  # never closed
        ("<think>\n\n</think>\n\n多喝水", "stop", True, True, False, True),  # empty think block
        ("<think>\n想一想\n</think>\n\n多喝", "length", True, True, True, False),  # cut at the token limit
        ("<think>\n想一", "length", True, False, True, False),
        ("好的。<think>\n想一想\n</think>\n\n多喝水", "stop", False, False, False, True),  # text before <think>
    ],
)
def test_think_format_on_each_malformed_case(text, finish, present, closed, non_empty, stopped):
    result = think_format(Reply(text, finish, 10))
    assert (result.present, result.closed, result.non_empty, result.stopped) == (present, closed, non_empty, stopped)
    assert result.compliant == (present and closed and non_empty and stopped)


LEXICON = parse_lexicon(
    "糖尿病\tdisease\n糖尿病性白内障\tdisease\n阿司匹林\tdrug\n头痛\tsymptom\n".encode(), "test.tsv"
)


def test_term_recall_uses_longest_match_terms_of_the_reference():
    # reference terms (longest match): 糖尿病性白内障, 阿司匹林 — not 糖尿病 on its own
    # the reply names 阿司匹林 and only 糖尿病, so 1 of 2 reference terms is found
    assert found_terms(LEXICON, "糖尿病性白内障患者可服用阿司匹林", "糖尿病患者服用阿司匹林") == (1, 2)
    assert found_terms(LEXICON, "多休息", "多休息") == (0, 0)


def test_reply_scores_pool_terms_and_score_answers_only():
    replies = [
        Reply("<think>\n头痛头痛头痛\n</think>\n\n服用阿司匹林", "stop", 12),
        Reply("<think>\n想", "length", 3),
    ]
    references = ["可服用阿司匹林", "头痛时多休息"]
    scores = reply_scores(replies, references, LEXICON)
    # terms: reply 1's answer names 阿司匹林 (1 of 1); reference 2's 头痛 is in no answer (0 of 1) -> 1/2
    assert scores["term_recall"] == pytest.approx(0.5)
    assert scores["think_compliance"] == pytest.approx(0.5)
    assert scores["think_checks"] == {"present": 1.0, "closed": 0.5, "non_empty": 1.0, "stopped": 0.5}
    # lengths in characters: think 6 and 1, answer 6 and 0
    assert (scores["think_chars"], scores["answer_chars"]) == (3.5, 3.0)
    # ROUGE-L on the answers only: 服用阿司匹林 vs 可服用阿司匹林 -> LCS 6, P 1, R 6/7 -> 12/13; empty answer -> 0
    assert scores["rouge_l"] == pytest.approx((12 / 13 + 0) / 2)
    # the think block 头痛头痛头痛 must not count towards reference 2
    assert scores["bleu4"] == pytest.approx(corpus_bleu(["服用阿司匹林", ""], references))
