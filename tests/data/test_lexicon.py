"""Lexicon files, the shipped lexicons, the rules that built `medical.tsv`, and longest-match finding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtune.data.lexicon import (
    CATEGORY_TAGS,
    Lexicon,
    LexiconError,
    build_medical_lexicon,
    category_tag,
    icd_terms,
    load_lexicon,
    suffix_category,
)

SHIPPED_DATA = Path(__file__).parents[2] / "src" / "medtune" / "resources" / "data" / "delicate_medical_r1_val.jsonl"


def shipped_texts() -> list[str]:
    rows = [json.loads(line) for line in SHIPPED_DATA.read_text(encoding="utf-8").splitlines()]
    return [row[field] for row in rows for field in ("question", "answer")]


def naive_longest_matches(terms: set[str], text: str) -> list[tuple[int, int]]:
    """A second, slower implementation: try every term length at each position, longest first."""
    lengths = sorted({len(term) for term in terms}, reverse=True)
    spans, position = [], 0
    while position < len(text):
        length = next((n for n in lengths if text[position : position + n] in terms), 0)
        if length:
            spans.append((position, position + length))
            position += length
        else:
            position += 1
    return spans


def write(tmp_path: Path, content: str | bytes, name: str = "terms.tsv") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_longest_match_takes_the_whole_compound_term():
    lexicon = Lexicon({"糖尿病": "disease", "糖尿病性白内障": "medical", "白内障": "disease"}, "test")
    matches = lexicon.find("确诊糖尿病性白内障，另有糖尿病。")
    assert [(m.term, m.start, m.end) for m in matches] == [("糖尿病性白内障", 2, 9), ("糖尿病", 12, 15)]


def test_matches_do_not_overlap_and_scan_left_to_right():
    lexicon = Lexicon({"高血压": "disease", "血压": "medical", "压力": "medical"}, "test")
    assert [m.term for m in lexicon.find("高血压力大，血压高")] == ["高血压", "血压"]


def test_falls_back_to_the_longest_term_when_a_longer_prefix_dies_out():
    lexicon = Lexicon({"糖尿": "symptom", "糖尿病性白内障": "medical"}, "test")
    assert [m.term for m in lexicon.find("糖尿病性白")] == ["糖尿"]
    assert [m.term for m in lexicon.find("见糖尿")] == ["糖尿"]


def test_find_agrees_with_a_naive_implementation_on_the_shipped_data():
    lexicon = load_lexicon("medical")
    terms = set(lexicon.categories)
    for text in shipped_texts():
        matches = lexicon.find(text)
        assert [(m.start, m.end) for m in matches] == naive_longest_matches(terms, text)
        assert all(text[m.start : m.end] == m.term and lexicon.categories[m.term] == m.category for m in matches)


def test_shipped_medical_lexicon_loads_with_its_categories():
    lexicon = load_lexicon("medical")
    categories = set(lexicon.categories.values())
    assert categories == {"disease", "symptom", "drug", "examination", "treatment", "body_part", "medical"}
    assert len(lexicon) > 15_000
    expected = {
        "糖尿病": "disease",
        "头痛": "symptom",
        "阿莫西林胶囊": "drug",
        "脑电图": "examination",
        "胆囊切除术": "treatment",
        "甲状腺": "body_part",
    }
    assert {term: lexicon.categories[term] for term in expected} == expected
    stop_listed = ["医院", "检查", "治疗", "症状", "患者"]
    assert not any(word in lexicon.categories for word in stop_listed)
    assert all(category_tag(category) != category for category in categories)


def test_shipped_reference_lexicon_is_the_reference_experiments_12_words():
    lexicon = load_lexicon("reference")
    assert lexicon.terms() == [
        "症状",
        "诊断",
        "治疗",
        "病因",
        "预防",
        "并发症",
        "药物",
        "剂量",
        "手术",
        "检查",
        "病理",
        "临床",
    ]
    assert set(lexicon.categories.values()) == {"reference"}


def test_user_lexicon_file_with_comments_blank_lines_bom_and_crlf(tmp_path):
    path = write(tmp_path, "\ufeff# my terms\r\n\r\n胸闷\t症状\r\n  # indented comment\r\n心电图\r\n")
    lexicon = load_lexicon(str(path))
    assert lexicon.categories == {"胸闷": "症状", "心电图": "medical"}
    assert category_tag("症状") == "症状" and category_tag("medical") == CATEGORY_TAGS["medical"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no terms"),
        ("# only a comment\n\n", "no terms"),
        ("头痛\n胸闷\tsymptom\textra\n", ":2: expected `term` or `term<TAB>category`, found 3"),
        ("头痛\n\tsymptom\n", ":2: empty term"),
        ("头痛\t\n", ":1: empty category"),
        ("头痛\tsymptom\n胸闷\n头痛\tdisease\n", ":3: term '头痛' has category 'disease' here but 'symptom' on line 1"),
        ("头痛\n\x00\x01PK\x03\x04\n", ":2: control character U+0000; a lexicon is a text file"),
        ("精神\t606946\n医院\t580436\n", ":1: category '606946' is a number"),  # THUOCL's term<TAB>frequency
    ],
)
def test_bad_lexicon_file_names_file_and_line(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(LexiconError) as err:
        load_lexicon(str(path))
    assert str(path) in str(err.value) and message in str(err.value)


def test_lexicon_file_that_is_not_utf8_names_the_line(tmp_path):
    path = write(tmp_path, "头痛\n胸闷\n".encode() + "发热\n".encode("gbk"))
    with pytest.raises(LexiconError, match=rf"{path}:3: not valid UTF-8"):
        load_lexicon(str(path))


def test_missing_lexicon_file_and_folder(tmp_path):
    with pytest.raises(LexiconError, match="lexicon file not found"):
        load_lexicon(str(tmp_path / "absent.tsv"))
    with pytest.raises(LexiconError, match="is a folder"):
        load_lexicon(str(tmp_path))


@pytest.mark.parametrize(
    ("term", "category"),
    [
        ("胆囊切除术", "treatment"),
        ("显微外科技术", "medical"),
        ("白术", "drug"),
        ("阿莫西林胶囊", "drug"),
        ("萼片", "medical"),
        ("偏头痛", "symptom"),
        ("止痛", "medical"),
        ("睾丸", "body_part"),
        ("肺癌", "disease"),
        ("胸片", "examination"),
        ("血压", "medical"),
    ],
)
def test_suffix_rules_longest_suffix_wins(term, category):
    assert suffix_category(term) == category


def test_icd_names_yield_terms_without_coding_notes_and_buckets():
    assert icd_terms("麻风[汉森病]") == ["麻风", "汉森病"]
    assert icd_terms("分离[转换]性障碍") == ["分离性障碍", "转换性障碍"]
    assert icd_terms("细菌性肺炎,不可归类在他处者") == ["细菌性肺炎"]
    assert icd_terms("其他细菌性食物中毒,不可归类在他处者") == []
    assert icd_terms("斑疹热[蜱媒介的立克次体病]") == ["斑疹热"]


def test_build_prefers_icd_categories_and_applies_the_stop_list(tmp_path):
    thuocl = write(tmp_path, "医院\t580436\n头痛\t20602\n青光眼\t900\n阿莫西林胶囊\t12\n胃\t10\n", "thuocl.txt")
    icd = write(tmp_path, "code\tdisease\nR51\t头痛\nH40\t青光眼\nA00\t其他霍乱\n", "icd.tsv")
    assert build_medical_lexicon(thuocl, icd, stop_list={"医院"}) == {
        "头痛": "symptom",
        "青光眼": "disease",
        "阿莫西林胶囊": "drug",
    }


def test_build_rejects_a_malformed_source_line(tmp_path):
    thuocl = write(tmp_path, "头痛\t20602\n青光眼 900\n", "thuocl.txt")
    icd = write(tmp_path, "code\tdisease\n", "icd.tsv")
    with pytest.raises(LexiconError, match=r"thuocl.txt:2: expected `term<TAB>frequency`"):
        build_medical_lexicon(thuocl, icd, stop_list=set())
