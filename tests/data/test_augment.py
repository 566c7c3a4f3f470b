"""The term-masking augmentation: rates, determinism across resume, spans, loss exclusion, the reference preset."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from collections import Counter

import numpy
import pytest
from pydantic import ValidationError

from medtune.config import AugmentConfig
from medtune.data.augment import Augmenter, AugmentStats, MaskedTerm
from medtune.data.batching import TrainingSet
from medtune.data.formats import Sample
from medtune.data.lexicon import Lexicon, load_lexicon
from medtune.data.render import Encoded

LEXICON = Lexicon(
    {"头痛": "symptom", "发热": "symptom", "阿司匹林": "drug", "脑电图": "examination", "偏头痛": "disease"}, "test"
)
SAMPLE = Sample(
    question="头痛三天，伴发热，吃过阿司匹林。",
    think="患者头痛伴发热，先排除偏头痛，必要时做脑电图。头痛仍需观察。",
    answer="头痛合并发热时，阿司匹林可退热；发热不退请就医。",
    source="hand-made:1",
)


def augmenter(seed: int = 7, lexicon: Lexicon = LEXICON, **settings) -> Augmenter:
    return Augmenter(AugmentConfig(enabled=True, **settings), lexicon, seed)


def assert_within_4_sigma(successes: int, trials: int, probability: float) -> None:
    sigma = math.sqrt(trials * probability * (1 - probability))
    assert abs(successes - trials * probability) <= 4 * sigma, (successes, trials, probability)


def restore(sample: Sample, masked_terms: list[MaskedTerm]) -> Sample:
    """Put the original terms back in place of the masks, right to left so earlier spans stay valid."""
    texts = {field: getattr(sample, field) for field in ("question", "think", "answer")}
    for term in sorted(masked_terms, key=lambda t: t.start, reverse=True):
        text = texts[term.field]
        texts[term.field] = text[: term.start] + term.term + text[term.end :]
    return Sample(**texts, system=sample.system, source=sample.source)


@pytest.mark.parametrize("probability", [0.1, 0.35])
def test_realised_share_is_within_binomial_bounds(probability):
    aug = augmenter(probability=probability)
    masked = sum(bool(aug.apply(SAMPLE, epoch=0, index=index)[1]) for index in range(10_000))
    assert_within_4_sigma(masked, 10_000, probability)


def test_probability_zero_never_masks_and_one_always_does():
    never, always = augmenter(probability=0.0), augmenter(probability=1.0)
    for index in range(500):
        unchanged, terms = never.apply(SAMPLE, epoch=0, index=index)
        assert terms == [] and unchanged == SAMPLE and unchanged is not SAMPLE
        masked, terms = always.apply(SAMPLE, epoch=0, index=index)
        assert terms and masked.question != SAMPLE.question


def test_sample_without_terms_is_left_unchanged():
    plain = Sample(question="今天天气如何？", think="无", answer="晴。")
    assert augmenter(probability=1.0).apply(plain, epoch=0, index=0) == (plain, [])


def test_same_seed_epoch_index_gives_the_same_masks_in_a_fresh_augmenter():
    settings = dict(probability=0.5, fields=["question", "think", "answer"], occurrence="all")
    first, resumed = augmenter(**settings), augmenter(**settings)
    for epoch in range(3):
        for index in range(100):
            assert first.apply(SAMPLE, epoch, index) == resumed.apply(SAMPLE, epoch, index)
    assert first.apply(SAMPLE, numpy.int64(2), numpy.int64(41)) == first.apply(SAMPLE, 2, 41)


def test_masks_are_drawn_afresh_each_epoch_and_differ_by_seed():
    aug = augmenter(probability=1.0, fields=["think"])
    epoch0 = [aug.apply(SAMPLE, 0, index) for index in range(50)]
    epoch1 = [aug.apply(SAMPLE, 1, index) for index in range(50)]
    other_seed = [augmenter(seed=8, probability=1.0, fields=["think"]).apply(SAMPLE, 0, index) for index in range(50)]
    assert sum(a != b for a, b in zip(epoch0, epoch1)) > 10
    assert sum(a != b for a, b in zip(epoch0, other_seed)) > 10


def test_fixed_masks_ignore_the_epoch():
    aug = augmenter(probability=0.5, redraw_every_epoch=False)
    assert all(aug.apply(SAMPLE, 0, index) == aug.apply(SAMPLE, 5, index) for index in range(100))


def test_masks_do_not_depend_on_pythons_hash_salt():
    script = (
        "from medtune.config import AugmentConfig; from medtune.data.augment import Augmenter;"
        "from medtune.data.lexicon import Lexicon; from medtune.data.formats import Sample;"
        f"lex = Lexicon({LEXICON.categories!r}, 'test');"
        "aug = Augmenter(AugmentConfig(enabled=True, probability=0.5, fields=['think']), lex, 7);"
        f"sample = Sample(question='', think={SAMPLE.think!r}, answer='');"
        "print([aug.apply(sample, 1, index)[0].think for index in range(20)])"
    )
    here = repr([augmenter(probability=0.5, fields=["think"]).apply(SAMPLE, 1, index)[0].think for index in range(20)])
    for hash_seed in ("1", "2"):
        run = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == here


def test_resumed_stats_and_masks_equal_the_uninterrupted_run():
    samples = [SAMPLE] * 40

    def draw(aug: Augmenter, stats: AugmentStats, epoch: int, indices: range) -> list:
        results = []
        for index in indices:
            sample, terms = aug.apply(samples[index], epoch, index)
            stats.record(epoch, terms)
            results.append(sample)
        return results

    uninterrupted_stats = AugmentStats()
    uninterrupted = [draw(augmenter(probability=0.3), uninterrupted_stats, epoch, range(40)) for epoch in range(2)]

    before_stats = AugmentStats()
    before = draw(augmenter(probability=0.3), before_stats, 0, range(40)) + draw(
        augmenter(probability=0.3), before_stats, 1, range(25)
    )
    checkpoint = json.loads(json.dumps(before_stats.state_dict()))
    resumed_stats = AugmentStats()
    resumed_stats.load_state_dict(checkpoint)
    after = draw(augmenter(probability=0.3), resumed_stats, 1, range(25, 40))

    assert before + after == uninterrupted[0] + uninterrupted[1]
    assert [resumed_stats.epoch_summary(e) for e in range(2)] == [
        uninterrupted_stats.epoch_summary(e) for e in range(2)
    ]


@pytest.mark.parametrize("occurrence", ["first", "all"])
def test_spans_point_at_the_mask_strings_in_the_new_text(occurrence):
    aug = augmenter(
        probability=1.0, fields=["question", "think", "answer"], occurrence=occurrence, terms_per_sample=(1, 3)
    )
    tags = {"symptom": "症状", "drug": "药物", "examination": "检查", "disease": "疾病"}
    for index in range(200):
        masked, terms = aug.apply(SAMPLE, 0, index)
        assert terms
        for term in terms:
            assert getattr(masked, term.field)[term.start : term.end] == term.replacement
            assert term.replacement in ("[MASK]", "...", f"[{tags[term.category]}]")
        for field in ("think", "answer"):
            assert masked.masked.get(field, []) == [(t.start, t.end) for t in terms if t.field == field]
        assert restore(masked, terms) == SAMPLE


def test_occurrence_first_replaces_one_occurrence_and_all_replaces_every_one():
    single_term = Lexicon({"发热": "symptom"}, "test")
    first = augmenter(lexicon=single_term, probability=1.0, fields=["answer"], occurrence="first")
    every = augmenter(lexicon=single_term, probability=1.0, fields=["answer"], occurrence="all")
    assert len(first.apply(SAMPLE, 0, 0)[1]) == 1
    masked, terms = every.apply(SAMPLE, 0, 0)
    assert len(terms) == SAMPLE.answer.count("发热") == 2 and "发热" not in masked.answer


def test_terms_per_sample_counts_distinct_terms():
    aug = augmenter(probability=1.0, fields=["think"], terms_per_sample=(2, 2), occurrence="all")
    for index in range(50):
        terms = aug.apply(SAMPLE, 0, index)[1]
        assert len({t.term for t in terms}) == 2
    draws = Counter(
        len(augmenter(probability=1.0, fields=["think"]).apply(SAMPLE, 0, index)[1]) for index in range(400)
    )
    assert set(draws) == {1, 2}


def test_include_leaves_no_span_out_of_the_loss():
    masked, terms = augmenter(probability=1.0, fields=["think", "answer"], mask_loss="include").apply(SAMPLE, 0, 0)
    assert terms and masked.masked == {}


def test_question_masks_are_reported_but_never_excluded_from_the_loss():
    masked, terms = augmenter(probability=1.0, fields=["question"], mask_loss="exclude").apply(SAMPLE, 0, 0)
    assert terms and {t.field for t in terms} == {"question"}
    assert masked.masked == {} and masked.question != SAMPLE.question


def test_input_sample_is_untouched_and_masked_input_is_refused():
    original = copy.deepcopy(SAMPLE)
    masked, _ = augmenter(probability=1.0, fields=["think", "answer"]).apply(SAMPLE, 0, 0)
    assert SAMPLE == original and masked.masked
    with pytest.raises(ValueError, match="hand-made:1: already has masked spans"):
        augmenter(probability=1.0).apply(masked, 0, 1)


def test_user_lexicon_category_appears_in_the_mask(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("心内科\t科室\n", encoding="utf-8")
    cfg = AugmentConfig(enabled=True, probability=1.0, mask_styles=["[{category}]"], lexicon=str(path))
    masked, terms = Augmenter.from_config(cfg, seed=1).apply(Sample(question="挂心内科吗", think="", answer=""), 0, 0)
    assert masked.question == "挂[科室]吗" and terms == [MaskedTerm("question", "心内科", "科室", "[科室]", 1, 5)]


# --- the reference-compatible preset -------------------------------------------------------------------


def reference_augmenter(seed: int = 3, probability: float = 1.0) -> Augmenter:
    return Augmenter.from_config(
        AugmentConfig(enabled=True, preset="reference-compatible", probability=probability), seed
    )


def test_reference_preset_masks_the_first_occurrence_of_one_word_in_the_answer():
    sample = Sample(question="需要做什么检查？", think="先问症状再检查。", answer="建议先做检查，检查后再看。")
    for index in range(30):
        masked, terms = reference_augmenter().apply(sample, epoch=0, index=index)
        (term,) = terms
        assert term.term == "检查" and term.field == "answer" and term.replacement in ("[MASK]", "[TERM]", "...")
        assert masked.answer == f"建议先做{term.replacement}，检查后再看。"
        assert (masked.question, masked.think) == (sample.question, sample.think)
        assert masked.masked == {}


def test_reference_preset_leaves_answers_without_its_words_alone():
    sample = Sample(question="头痛怎么办？", think="考虑症状。", answer="多休息，必要时就医。")
    assert reference_augmenter().apply(sample, 0, 0) == (sample, [])


def test_reference_preset_searches_substrings_not_longest_matches():
    # 并发症状 holds both 并发症 and 症状; the reference tested `word in answer`, so either can be masked.
    sample = Sample(question="", think="", answer="出现并发症状")
    outcomes = {
        reference_augmenter().apply(sample, 0, index)[0].answer.replace("[TERM]", "[MASK]").replace("...", "[MASK]")
        for index in range(60)
    }
    assert outcomes == {"出现[MASK]状", "出现并发[MASK]"}


def test_reference_preset_picks_words_and_styles_uniformly_and_once_per_sample():
    sample = Sample(question="", think="", answer="病因不明，诊断困难，治疗以对症为主。")
    aug = reference_augmenter()
    draws = [aug.apply(sample, 0, index)[1][0] for index in range(3000)]
    for counts in (Counter(t.term for t in draws), Counter(t.replacement for t in draws)):
        assert len(counts) == 3
        for count in counts.values():
            assert_within_4_sigma(count, 3000, 1 / 3)
    assert all(aug.apply(sample, epoch, 11) == aug.apply(sample, 0, 11) for epoch in range(1, 5))


def test_reference_preset_realised_rate_and_config_conflicts():
    sample = Sample(question="", think="", answer="治疗")
    aug = reference_augmenter(probability=0.1)
    assert_within_4_sigma(sum(bool(aug.apply(sample, 0, index)[1]) for index in range(10_000)), 10_000, 0.1)
    assert load_lexicon(aug.cfg.lexicon).terms() == aug.lexicon.terms()
    with pytest.raises(ValidationError, match="preset reference-compatible fixes fields"):
        AugmentConfig(preset="reference-compatible", fields=["question"])


# --- stats ---------------------------------------------------------------------------------------------


def test_stats_summarise_each_epoch_and_survive_a_state_round_trip():
    stats = AugmentStats()
    headache = MaskedTerm("question", "头痛", "symptom", "[MASK]", 0, 6)
    aspirin = MaskedTerm("answer", "阿司匹林", "drug", "...", 3, 6)
    for terms in ([headache, aspirin], [], [headache], []):
        stats.record(0, terms)
    stats.record(1, [])
    assert stats.epoch_summary(0) == {
        "epoch": 0,
        "samples": 4,
        "masked_samples": 2,
        "masked_share": 0.5,
        "terms_masked": 3,
        "terms_by_category": {"drug": 1, "symptom": 2},
    }
    restored = AugmentStats()
    restored.load_state_dict(json.loads(json.dumps(stats.state_dict())))
    assert [restored.epoch_summary(e) for e in (0, 1)] == [stats.epoch_summary(e) for e in (0, 1)]
    with pytest.raises(KeyError, match="no samples recorded for epoch 2"):
        stats.epoch_summary(2)
    with pytest.raises(ValueError, match="malformed"):
        restored.load_state_dict({"epochs": [{"epoch": 0}]})


def test_the_training_set_counts_what_it_draws_and_checkpoints_its_counts():
    """Drawn samples are counted per epoch; the counts travel in the set's state_dict, and an unaugmented set
    answers None for each summary and ignores a checkpoint's counts."""
    samples = [SAMPLE, dataclasses.replace(SAMPLE, source="hand-made:2")]

    def encode(sample: Sample) -> Encoded:
        ids = [ord(character) for character in sample.answer]  # the answer's text itself, masks included
        return Encoded(ids, ids, [2] * len(ids))

    def training_set(augment: Augmenter | None) -> TrainingSet:
        return TrainingSet(samples, [encode(sample) for sample in samples], encode, augment.apply if augment else None)

    augmented = training_set(augmenter(probability=1.0, fields=["answer"]))
    positions = [(0, 0), (0, 1), (1, 1)]
    items = augmented.draw(positions)
    assert items == [encode(augmented.augment(samples[index], epoch, index)[0]) for epoch, index in positions]
    assert items[0] != augmented.encoded[0], "the drawn sample is the augmented one"
    assert [augmented.augmentation_epoch(epoch)["samples"] for epoch in (0, 1)] == [2, 1]
    assert augmented.augmentation_summary() == {"epochs": [augmented.augmentation_epoch(epoch) for epoch in (0, 1)]}

    resumed = training_set(augmenter(probability=1.0, fields=["answer"]))
    resumed.load_state_dict(json.loads(json.dumps(augmented.state_dict())))
    assert resumed.augmentation_summary() == augmented.augmentation_summary()
    with pytest.raises(ValueError, match="augmentation stats in the checkpoint are malformed"):
        resumed.load_state_dict({})  # augmentation on, but the checkpoint holds no counts

    plain = training_set(None)
    assert plain.draw([(0, 1), (0, 0)]) == [plain.encoded[1], plain.encoded[0]]
    assert plain.augmentation_epoch(0) is None and plain.augmentation_summary() is None
    plain.load_state_dict(augmented.state_dict())
    assert plain.state_dict() == {"augment_stats": None} and plain.augmentation_summary() is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mask_styles": ["[MASK]", ""]}, "none empty"),
        ({"fields": ["think", "think"]}, "each once"),
        ({"terms_per_sample": (2, 1)}, "1 <= low <= high"),
        ({"lexicon": " "}, "lexicon must be"),
    ],
)
def test_bad_augment_settings_are_config_errors(settings, message):
    with pytest.raises(ValidationError, match=message):
        AugmentConfig(**settings)
