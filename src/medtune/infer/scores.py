"""Scores for generated replies: pure functions of strings, checked by hand in tests/infer/test_scores.py.

BLEU-4 and ROUGE-L compare the *answer* of a reply with the reference answer, never the think block.
Text is split the way Chinese is usually scored: every character is a token, except that a run of ASCII
letters or digits (a drug name, a dose, `CT`) is one token. Scores are fractions in [0, 1], not percent.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from medtune.data.lexicon import Lexicon
from medtune.infer.generation import Reply

_TOKEN = re.compile(r"[A-Za-z0-9]+|\S")
BLEU_ORDER = 4


def score_tokens(text: str) -> list[str]:
    """`头痛3天, 用CT` -> 头 痛 3 天 , 用 CT."""
    return _TOKEN.findall(text)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (Papineni et al.): clipped n-gram matches and the brevity penalty summed over the whole
    corpus, one reference each, no smoothing (any n-gram order without a match gives 0)."""
    matches, totals = [0] * BLEU_ORDER, [0] * BLEU_ORDER
    hyp_length = ref_length = 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp, ref = score_tokens(hypothesis), score_tokens(reference)
        hyp_length, ref_length = hyp_length + len(hyp), ref_length + len(ref)
        for n in range(1, BLEU_ORDER + 1):
            hyp_ngrams, ref_ngrams = _ngrams(hyp, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(count, ref_ngrams[gram]) for gram, count in hyp_ngrams.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_length == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / BLEU_ORDER
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return brevity * math.exp(log_precision)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix / Hyyrö): one big-integer
    add per token of `b` instead of a len(a) x len(b) table, so 2,000-character answers cost milliseconds."""
    positions: dict[str, int] = {}
    for index, token in enumerate(a):
        positions[token] = positions.get(token, 0) | (1 << index)
    full = (1 << len(a)) - 1
    row = full
    for token in b:
        matched = row & positions.get(token, 0)
        row = ((row + matched) | (row - matched)) & full
    return len(a) - row.bit_count()


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 of one pair: LCS-based precision and recall, harmonic mean (as the rouge-score package)."""
    hyp, ref = score_tokens(hypothesis), score_tokens(reference)
    common = lcs_length(hyp, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class ThinkFormat:
    """Whether a reply has the trained shape `<think>\\n…\\n</think>\\n\\n answer <|im_end|>`."""

    present: bool
    """The reply opens with `<think>`."""
    closed: bool
    """`</think>` follows."""
    non_empty: bool
    """The think block holds more than whitespace."""
    stopped: bool
    """The model ended its turn with <|im_end|> instead of being cut at max_new_tokens."""

    @property
    def compliant(self) -> bool:
        return self.present and self.closed and self.non_empty and self.stopped


def think_format(reply: Reply) -> ThinkFormat:
    parts = reply.parts
    present = parts.opened and not parts.preamble
    return ThinkFormat(
        present=present,
        closed=present and parts.closed,
        non_empty=present and bool(parts.think),
        stopped=reply.finish_reason == "stop",
    )


def reference_terms(lexicon: Lexicon, reference_answer: str) -> set[str]:
    """The distinct lexicon terms of a reference answer (longest match, so 糖尿病性白内障 is one term)."""
    return {match.term for match in lexicon.find(reference_answer)}


def found_terms(lexicon: Lexicon, reference_answer: str, reply_answer: str) -> tuple[int, int]:
    """(terms of the reference answer that occur in the reply's answer, terms of the reference answer)."""
    terms = reference_terms(lexicon, reference_answer)
    return sum(term in reply_answer for term in terms), len(terms)


def reply_scores(replies: Sequence[Reply], reference_answers: Sequence[str], lexicon: Lexicon) -> dict:
    """The generation metrics of eval.json for one set of replies.

    `term_recall` pools all samples: terms found over terms in the references (None when no reference
    answer holds a lexicon term). Lengths are mean characters of the reply's think block and answer.
    """
    if len(replies) != len(reference_answers):
        raise ValueError(f"{len(replies)} replies for {len(reference_answers)} references")
    if not replies:
        raise ValueError("no replies to score")
    answers = [reply.answer for reply in replies]
    formats = [think_format(reply) for reply in replies]
    found = total = 0
    for reference, answer in zip(reference_answers, answers):
        hit, count = found_terms(lexicon, reference, answer)
        found, total = found + hit, total + count
    n = len(replies)
    return {
        "bleu4": corpus_bleu(answers, reference_answers),
        "rouge_l": sum(rouge_l(answer, reference) for answer, reference in zip(answers, reference_answers)) / n,
        "think_compliance": sum(f.compliant for f in formats) / n,
        "term_recall": found / total if total else None,
        "think_chars": sum(len(reply.think) for reply in replies) / n,
        "answer_chars": sum(len(answer) for answer in answers) / n,
        "think_checks": {
            check: sum(getattr(f, check) for f in formats) / n
            for check in ("present", "closed", "non_empty", "stopped")
        },
        "reference_terms": total,
    }
