"""Reading every supported format and file type, bad-row handling and shipped-data resolution."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medtune.data.formats import (
    ROW,
    DataError,
    Sample,
    read_samples,
    resolve_data_path,
)

FIXTURES = Path(__file__).parent / "fixtures"
SHIPPED = "medtune:delicate_medical_r1_val"
SYSTEM = "你是一个医学专家。"


def _first_shipped_rows(count: int) -> list[dict]:
    with resolve_data_path(SHIPPED).open(encoding="utf-8") as file:
        return [json.loads(next(file)) for _ in range(count)]


QTA_ROWS = _first_shipped_rows(6)
"""Real question/think/answer rows that the other formats are built from, so every format is checked against them."""


def expected(row: dict, system: str = SYSTEM) -> tuple[str, str, str, str]:
    return row["question"].strip(), row["think"].strip(), row["answer"].strip(), system


def fields(sample: Sample) -> tuple[str, str, str, str]:
    return sample.question, sample.think, sample.answer, sample.system


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def encode(row: object) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


def reply(row: dict) -> str:
    return f"<think>\n{row['think']}\n</think>\n\n{row['answer']}"


# --- formats and file types


def test_shipped_file_reads_every_row():
    path = resolve_data_path(SHIPPED)
    raw_rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    result = read_samples(path, system_prompt=SYSTEM)

    assert len(result.samples) == 241 == len(raw_rows)
    assert result.skipped == [] and result.formats == {"qta": 241}
    assert [fields(sample) for sample in result.samples] == [expected(row) for row in raw_rows]
    assert result.samples[16].source == f"{path.name}:17"


def test_qta_system_field_is_used_and_empty_falls_back(tmp_path):
    rows = [{**QTA_ROWS[0], "system": "你是儿科医生。"}, {**QTA_ROWS[1], "system": "  "}, QTA_ROWS[2]]
    path = write_lines(tmp_path / "train.jsonl", [encode(row) for row in rows])

    samples = read_samples(path, system_prompt=SYSTEM).samples

    assert [sample.system for sample in samples] == ["你是儿科医生。", SYSTEM, SYSTEM]


def test_sharegpt_fixture():
    path = FIXTURES / "medicalgpt_sft_sharegpt_5.jsonl"
    raw_rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    with pytest.raises(
        DataError, match=r"medicalgpt_sft_sharegpt_5\.jsonl:1: field 'conversations\[1\]\.value': no reasoning"
    ):
        read_samples(path, system_prompt=SYSTEM)
    result = read_samples(path, system_prompt=SYSTEM, think="optional")

    assert result.formats == {"messages": 5} and result.multi_turn_truncated == 0
    assert result.as_dict()["rows_without_think"] == 5
    for sample, row in zip(result.samples, raw_rows, strict=True):
        human, gpt = row["conversations"]
        assert fields(sample) == (human["value"].strip(), "", gpt["value"].strip(), SYSTEM)


def test_openai_messages_keep_system_split_think_and_count_multi_turn(tmp_path):
    single = {
        "messages": [
            {"role": "system", "content": "你是全科医生。"},
            {"role": "user", "content": QTA_ROWS[0]["question"]},
            {"role": "assistant", "content": reply(QTA_ROWS[0])},
        ]
    }
    multi = {
        "messages": [
            {"role": "user", "content": QTA_ROWS[1]["question"]},
            {"role": "assistant", "content": reply(QTA_ROWS[1])},
            {"role": "user", "content": QTA_ROWS[2]["question"]},
            {"role": "assistant", "content": reply(QTA_ROWS[2])},
        ]
    }
    path = write_lines(tmp_path / "chat.jsonl", [encode(single), encode(multi)])

    result = read_samples(path, system_prompt=SYSTEM)

    assert [fields(sample) for sample in result.samples] == [
        expected(QTA_ROWS[0], "你是全科医生。"),
        expected(QTA_ROWS[1]),
    ]
    assert result.multi_turn_truncated == 1


@pytest.mark.parametrize(
    ("key", "messages"),
    [
        ("conversations", [("from", "system"), ("from", "user"), ("from", "assistant")]),  # ShareGPT, OpenAI's roles
        ("conversations", [("role", "system"), ("role", "user"), ("role", "assistant")]),  # OpenAI's keys
        ("messages", [("role", "developer"), ("role", "user"), ("role", "assistant")]),  # OpenAI's newer system
        ("messages", [("from", "system"), ("from", "human"), ("from", "gpt")]),  # ShareGPT's keys
    ],
)
def test_chat_rows_in_either_style_under_either_key_are_read_alike(tmp_path, key, messages):
    """Datasets mix ShareGPT's and OpenAI's keys and role names; every mix means the same exchange."""
    texts = ("你是全科医生。", QTA_ROWS[0]["question"], reply(QTA_ROWS[0]))
    content = {"from": "value", "role": "content"}
    row = {key: [{role_key: role, content[role_key]: text} for (role_key, role), text in zip(messages, texts)]}
    path = write_lines(tmp_path / "chat.jsonl", [encode(row)])
    assert [fields(sample) for sample in read_samples(path, system_prompt=SYSTEM).samples] == [
        expected(QTA_ROWS[0], "你是全科医生。")
    ]


def test_alpaca_joins_input_and_splits_think(tmp_path):
    first, second, third = QTA_ROWS[:3]
    rows = [
        {"instruction": first["question"], "input": "", "output": reply(first)},
        {"instruction": "请回答下面的问题。", "input": second["question"], "output": reply(second)},
        {"instruction": third["question"], "output": third["answer"]},
    ]
    path = write_lines(tmp_path / "alpaca.jsonl", [encode(row) for row in rows])

    result = read_samples(path, system_prompt=SYSTEM, think="optional")
    samples = result.samples

    assert result.without_think == 1
    assert fields(samples[0]) == expected(first)
    assert samples[1].question == "请回答下面的问题。\n" + second["question"].strip()
    assert fields(samples[2]) == (third["question"].strip(), "", third["answer"].strip(), SYSTEM)


def test_auto_detects_each_row_of_a_mixed_file(tmp_path):
    rows = [
        QTA_ROWS[0],
        {"instruction": QTA_ROWS[1]["question"], "output": reply(QTA_ROWS[1])},
        {
            "conversations": [
                {"from": "human", "value": QTA_ROWS[2]["question"]},
                {"from": "gpt", "value": reply(QTA_ROWS[2])},
            ]
        },
    ]
    path = write_lines(tmp_path / "mixed.jsonl", [encode(row) for row in rows])

    result = read_samples(path, system_prompt=SYSTEM)

    assert [fields(sample) for sample in result.samples] == [expected(row) for row in QTA_ROWS[:3]]
    assert result.formats == {"qta": 1, "alpaca": 1, "messages": 1}


def test_forced_format_reports_the_field_it_misses(tmp_path):
    """The shipped rows carry an `instruction` column too, so forced alpaca finds it and misses `output`."""
    path = write_lines(tmp_path / "train.jsonl", [encode(QTA_ROWS[0])])

    with pytest.raises(DataError, match=r"train\.jsonl:1: field 'output': missing"):
        read_samples(path, format="alpaca", system_prompt=SYSTEM)


@pytest.mark.parametrize("wrap", [False, True], ids=["array", "object-with-one-list"])
def test_json_file(tmp_path, wrap):
    data = {"data": QTA_ROWS[:3]} if wrap else QTA_ROWS[:3]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")

    samples = read_samples(path, system_prompt=SYSTEM).samples

    assert [fields(sample) for sample in samples] == [expected(row) for row in QTA_ROWS[:3]]
    assert [sample.source for sample in samples] == ["train.json:1", "train.json:2", "train.json:3"]


def test_json_bad_element_is_named_by_its_position(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([QTA_ROWS[0], {**QTA_ROWS[1], "answer": ""}]), encoding="utf-8")

    with pytest.raises(DataError, match=r"train\.json:2: field 'answer': empty"):
        read_samples(path, system_prompt=SYSTEM)


def test_json_file_that_is_not_a_list_of_rows(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"train": QTA_ROWS[:1], "validation": QTA_ROWS[1:2]}), encoding="utf-8")

    with pytest.raises(DataError, match="expected a JSON array"):
        read_samples(path, system_prompt=SYSTEM)


def test_json_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("[\n" + json.dumps(QTA_ROWS[0]) + ",\n}\n", encoding="utf-8")

    with pytest.raises(DataError, match=r"train\.json:3: field '\(row\)': invalid JSON"):
        read_samples(path, system_prompt=SYSTEM, skip_bad_rows=True)


def test_json_file_with_non_utf8_bytes_fails_whole_even_when_skipping(tmp_path):
    path = write_lines(tmp_path / "train.json", [b"[", encode(QTA_ROWS[0]) + b",", b'{"question": "\xff\xfe"}', b"]"])

    with pytest.raises(DataError, match=r"train\.json:3: field '\(row\)': not valid UTF-8"):
        read_samples(path, system_prompt=SYSTEM, skip_bad_rows=True)


def test_huatuo_fixture_fits_no_format():
    path = FIXTURES / "huatuo_meddialog_2.json"

    with pytest.raises(DataError) as raised:
        read_samples(path, system_prompt=SYSTEM)
    assert str(raised.value).startswith(f"{path}:1: field '(row)': no known format (keys: Department, doctor_diagnosis")

    with pytest.raises(DataError, match="no usable rows: all 2 are bad"):
        read_samples(path, system_prompt=SYSTEM, skip_bad_rows=True)


def test_parquet(tmp_path):
    rows = [{**row, "system": system} for row, system in zip(QTA_ROWS[:3], [None, "你是全科医生。", ""])]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)

    samples = read_samples(path, system_prompt=SYSTEM).samples

    assert [fields(sample) for sample in samples] == [
        expected(QTA_ROWS[0]),
        expected(QTA_ROWS[1], "你是全科医生。"),
        expected(QTA_ROWS[2]),
    ]
    assert samples[2].source == "train.parquet:3"


def test_parquet_messages_and_null_field(tmp_path):
    chat = {
        "messages": [
            {"role": "user", "content": QTA_ROWS[0]["question"]},
            {"role": "assistant", "content": reply(QTA_ROWS[0])},
        ]
    }
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([chat, {"messages": [{"role": "user", "content": None}]}]), path)

    with pytest.raises(DataError, match=r"chat\.parquet:2: field 'messages\[0\]\.content': missing"):
        read_samples(path, system_prompt=SYSTEM)
    result = read_samples(path, system_prompt=SYSTEM, skip_bad_rows=True)
    assert [fields(sample) for sample in result.samples] == [expected(QTA_ROWS[0])]


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"not parquet at all")

    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_samples(path, system_prompt=SYSTEM)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match=r"absent\.jsonl: file not found"):
        read_samples(tmp_path / "absent.jsonl", system_prompt=SYSTEM)
    (tmp_path / "train.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'"):
        read_samples(tmp_path / "train.xlsx", system_prompt=SYSTEM)


def test_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [b"\xef\xbb\xbf" + encode(QTA_ROWS[0])])

    assert fields(read_samples(path, system_prompt=SYSTEM).samples[0]) == expected(QTA_ROWS[0])


def test_empty_file(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [b"", b"  "])

    with pytest.raises(DataError, match="no rows"):
        read_samples(path, system_prompt=SYSTEM)


# --- bad rows


def _bad_rows(qta: dict) -> dict[str, tuple[bytes, str, str]]:
    """Each kind of bad row: (the line's bytes, the field the error must name, words of the reason)."""
    without_think = {key: value for key, value in qta.items() if key != "think"}
    return {
        "invalid-json": (encode(qta)[:-20], ROW, "invalid JSON"),
        "not-an-object": (b'["question", "answer"]', ROW, "expected a JSON object, got array"),
        "missing-field": (encode(without_think), "think", "missing"),
        "empty-field": (encode({**qta, "answer": " \n "}), "answer", "empty"),
        "empty-think-in-qta": (encode({**qta, "think": ""}), "think", "empty"),
        "wrong-type": (encode({**qta, "question": 42}), "question", "wrong type: expected a string, got int"),
        "non-utf8": (encode(qta)[:30] + b"\xff\xfe" + encode(qta)[30:], ROW, "not valid UTF-8"),
        "unknown-format": (encode({"ask": "头疼", "reply": "休息"}), ROW, "no known format"),
        "unknown-role": (
            encode({"conversations": [{"from": "human", "value": "头疼"}, {"from": "bot", "value": "休息"}]}),
            "conversations[1].from",
            "unknown role 'bot'",
        ),
        "no-assistant": (
            encode({"messages": [{"role": "user", "content": "头疼"}]}),
            "messages",
            "no assistant message",
        ),
        "unclosed-think": (encode({"instruction": "头疼", "output": "<think>想一想"}), "output", "never closed"),
        "text-before-think": (
            encode({"instruction": "头疼", "output": "好的。<think>想</think>答"}),
            "output",
            "text before '<think>': the think block must open the reply",
        ),
    }


BAD_ROWS = _bad_rows(QTA_ROWS[0])


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_row_raises_naming_file_line_and_field(tmp_path, kind):
    line_bytes, field_name, reason = BAD_ROWS[kind]
    path = write_lines(tmp_path / "train.jsonl", [encode(QTA_ROWS[0]), b"", line_bytes, encode(QTA_ROWS[1])])

    with pytest.raises(DataError) as raised:
        read_samples(path, system_prompt=SYSTEM)

    assert str(raised.value).startswith(f"{path}:3: field '{field_name}': ")
    assert reason in str(raised.value)
    assert (raised.value.line, raised.value.field) == (3, field_name)


WITHOUT_REFERENCE = {"missing-field", "empty-field", "empty-think-in-qta", "no-assistant"}
"""The bad rows above that lack the reply (a prompt without its reference): every other kind is broken otherwise."""
MORE_WITHOUT_REFERENCE = {
    "qta-without-answer": {"question": "头疼"} | {"think": "想一想"},
    "alpaca-without-output": {"instruction": "头疼"},
    "alpaca-without-reasoning": {"instruction": "头疼", "output": "休息"},
    "alpaca-empty-answer": {"instruction": "头疼", "output": "<think>想</think>"},
    "messages-empty-reply": {"messages": [{"role": "user", "content": "头疼"}, {"role": "assistant", "content": " "}]},
    "columns-without-reply": {"ask": "头疼"},
}


@pytest.mark.parametrize("kind", [*BAD_ROWS, *MORE_WITHOUT_REFERENCE])
def test_a_row_without_its_reply_is_flagged_as_without_a_reference(tmp_path, kind):
    """`eval --data` tells such rows apart (they suit `generate`) by this flag, not by the reason's words."""
    line = BAD_ROWS[kind][0] if kind in BAD_ROWS else encode(MORE_WITHOUT_REFERENCE[kind])
    path = write_lines(tmp_path / "rows.jsonl", [line])
    columns = {"question": "ask", "think": "why", "answer": "reply"} if kind.startswith("columns") else None

    with pytest.raises(DataError) as raised:
        read_samples(path, system_prompt=SYSTEM, columns=columns)

    assert raised.value.no_reference is (kind in WITHOUT_REFERENCE or kind in MORE_WITHOUT_REFERENCE)


def test_a_row_without_its_question_has_its_reference(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", [encode({"think": "想", "answer": "休息"})])
    with pytest.raises(DataError) as raised:
        read_samples(path, system_prompt=SYSTEM, format="qta")
    assert raised.value.field == "question" and not raised.value.no_reference


def test_skipping_records_every_bad_row_and_keeps_the_good_ones(tmp_path):
    lines, expected_bad, good_lines = [], [], []
    for index, (line_bytes, field_name, reason) in enumerate(BAD_ROWS.values()):
        good = QTA_ROWS[index % len(QTA_ROWS)]
        lines += [encode(good), line_bytes]
        good_lines.append(len(lines) - 1)
        expected_bad.append((f"train.jsonl:{len(lines)}", field_name, reason))
    path = write_lines(tmp_path / "train.jsonl", lines)

    result = read_samples(path, system_prompt=SYSTEM, skip_bad_rows=True)

    assert [sample.source for sample in result.samples] == [f"train.jsonl:{line}" for line in good_lines]
    assert len(result.skipped) == len(BAD_ROWS)
    for bad, (source, field_name, reason) in zip(result.skipped, expected_bad, strict=True):
        assert (bad.source, bad.field) == (source, field_name)
        assert reason in bad.reason
    stats = json.loads(json.dumps(result.as_dict()))
    assert stats["rows"] == len(good_lines) and stats["skipped_rows"] == len(BAD_ROWS)
    assert stats["skipped"][0] == {
        "source": expected_bad[0][0],
        "field": expected_bad[0][1],
        "reason": result.skipped[0].reason,
    }


def test_without_skipping_the_first_bad_row_raises(tmp_path):
    path = write_lines(
        tmp_path / "train.jsonl", [encode(QTA_ROWS[0]), BAD_ROWS["wrong-type"][0], BAD_ROWS["missing-field"][0]]
    )

    with pytest.raises(DataError, match=r"train\.jsonl:2: field 'question'"):
        read_samples(path, system_prompt=SYSTEM)


def test_only_bad_rows_raise_even_when_skipping(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [BAD_ROWS["empty-field"][0], BAD_ROWS["non-utf8"][0]])

    with pytest.raises(
        DataError, match=r"no usable rows: all 2 are bad, the first train\.jsonl:1: field 'answer': empty"
    ):
        read_samples(path, system_prompt=SYSTEM, skip_bad_rows=True)


def test_max_rows_counts_good_and_bad_rows(tmp_path):
    lines = [encode(QTA_ROWS[0]), BAD_ROWS["invalid-json"][0], encode(QTA_ROWS[1]), encode(QTA_ROWS[2])]
    path = write_lines(tmp_path / "train.jsonl", lines)

    result = read_samples(path, system_prompt=SYSTEM, skip_bad_rows=True, max_rows=3)

    assert [sample.source for sample in result.samples] == ["train.jsonl:1", "train.jsonl:3"]
    assert [bad.source for bad in result.skipped] == ["train.jsonl:2"]


# --- shipped data and the split


def test_resolve_shipped_name_and_paths(tmp_path, monkeypatch):
    shipped = resolve_data_path(SHIPPED)
    assert shipped.is_file() and shipped.name == "delicate_medical_r1_val.jsonl"

    with pytest.raises(DataError, match="shipped: medtune:delicate_medical_r1_val"):
        resolve_data_path("medtune:no_such_set")
    with pytest.raises(DataError, match="no shipped data set"):
        resolve_data_path("medtune:../data/delicate_medical_r1_val")

    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_path("~/train.jsonl") == tmp_path / "train.jsonl"
    assert resolve_data_path("data/train.jsonl") == Path("data/train.jsonl")


# --- CSV / TSV, column mapping, encodings


TOYHOM_CSV = FIXTURES / "toyhom_internal_medicine_8.gb18030.csv"
TOYHOM = {"question": "ask", "answer": "answer"}


def test_gb18030_csv_with_its_encoding_and_columns():
    result = read_samples(TOYHOM_CSV, system_prompt=SYSTEM, encoding="gb18030", columns=TOYHOM, think="optional")

    with TOYHOM_CSV.open(encoding="gb18030", newline="") as file:
        records = list(csv.DictReader(file))
    assert len(records) == 8 and all(record["ask"] and record["answer"] for record in records)
    assert [fields(sample) for sample in result.samples] == [
        (record["ask"].strip(), "", record["answer"].strip(), SYSTEM) for record in records
    ]
    assert [sample.source for sample in result.samples] == [f"{TOYHOM_CSV.name}:{line}" for line in range(2, 10)]
    assert result.as_dict()["rows_without_think"] == 8 and result.formats == {"qta": 8}


@pytest.mark.parametrize("skip_bad_rows", [False, True])
def test_gb18030_csv_without_its_encoding_names_it(skip_bad_rows):
    with pytest.raises(DataError) as raised:
        read_samples(TOYHOM_CSV, system_prompt=SYSTEM, columns=TOYHOM, think="optional", skip_bad_rows=skip_bad_rows)

    message = str(raised.value)
    assert message.startswith(f"{TOYHOM_CSV}:2: field '(row)': not valid UTF-8 (byte 1 of the line)")
    assert message.endswith("the file looks like GB18030: set data.encoding: gb18030")


def test_gbk_jsonl_without_its_encoding_is_one_error_for_the_file(tmp_path):
    def gbk(row: dict) -> bytes:
        return json.dumps(row, ensure_ascii=False).encode("gbk", errors="replace")

    rows = [row for row in QTA_ROWS if gbk(row).decode("gbk") == json.dumps(row, ensure_ascii=False)]
    assert len(rows) >= 3, "some real rows are GBK text"
    path = write_lines(tmp_path / "train.jsonl", [gbk(row) for row in rows])

    with pytest.raises(DataError, match=r"train\.jsonl:1: field '\(row\)': not valid UTF-8 .*looks like GB"):
        read_samples(path, system_prompt=SYSTEM, skip_bad_rows=True)
    samples = read_samples(path, system_prompt=SYSTEM, encoding="gbk").samples
    assert [fields(sample) for sample in samples] == [expected(row) for row in rows]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_utf16_and_utf32_files_read_once_named_and_are_named_when_not(tmp_path, encoding):
    """Windows tools save "Unicode" text as UTF-16, whose newline is not the byte 0x0A: the file is decoded whole."""
    rows = QTA_ROWS[:3]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_bytes("\r\n".join(json.dumps(row, ensure_ascii=False) for row in rows).encode(encoding) + b"")
    table = tmp_path / "train.csv"
    table.write_bytes(('question,think,answer\n"两行\n问题",想,答\n').encode(encoding))

    assert [fields(s) for s in read_samples(jsonl, system_prompt=SYSTEM, encoding=encoding).samples] == [
        expected(row) for row in rows
    ]
    (sample,) = read_samples(table, system_prompt=SYSTEM, encoding=encoding).samples
    assert fields(sample) == ("两行\n问题", "想", "答", SYSTEM) and sample.source == "train.csv:2"
    if encoding == "utf-16":  # its byte-order mark makes it recognisable
        with pytest.raises(
            DataError, match=r"train\.jsonl:1: .*not valid UTF-8.*looks like UTF-16: set data\.encoding: utf-16"
        ):
            read_samples(jsonl, system_prompt=SYSTEM)


def test_a_damaged_utf16_file_names_the_line_of_the_bad_bytes(tmp_path):
    path = tmp_path / "train.jsonl"
    good = "\n".join(json.dumps(row, ensure_ascii=False) for row in QTA_ROWS[:2]).encode("utf-16-le")
    path.write_bytes(good + "\n".encode("utf-16-le") + b"\x00\xd8" + "x".encode("utf-16-le"))  # a lone surrogate
    with pytest.raises(
        DataError, match=r"train\.jsonl:3: field '\(row\)': not valid UTF-16-LE \(byte \d+ of the file\)"
    ):
        read_samples(path, system_prompt=SYSTEM, encoding="utf-16-le")


def test_a_table_with_other_column_names_lists_them_and_names_data_columns(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("department,title,ask,answer\n内科,头痛,反复头痛,多休息\n", encoding="utf-8")
    with pytest.raises(DataError) as raised:
        read_samples(path, system_prompt=SYSTEM)
    assert str(raised.value) == (
        f"{path}:2: field 'question': missing (the row's keys: department, title, ask, answer); data.columns names "
        "the key that holds it"
    )


def test_question_joined_from_several_columns_and_think_required_by_default(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('title,ask,answer\n头痛,"反复头痛\n一周了",多休息\n', encoding="utf-8")

    with pytest.raises(DataError, match=r"train\.csv:2: field 'think': missing; set data\.think: optional"):
        read_samples(path, system_prompt=SYSTEM, columns={"question": ["title", "ask"], "answer": "answer"})
    sample = read_samples(path, system_prompt=SYSTEM, columns={"question": ["title", "ask"]}, think="optional").samples[
        0
    ]
    assert fields(sample) == ("头痛\n反复头痛\n一周了", "", "多休息", SYSTEM)


def test_tsv_with_standard_columns_and_records_spanning_lines(tmp_path):
    rows = QTA_ROWS[:3]
    path = tmp_path / "train.tsv"
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file, delimiter="\t")
        writer.writerow(["question", "think", "answer"])
        writer.writerows([row["question"], row["think"], row["answer"]] for row in rows)

    samples = read_samples(path, system_prompt=SYSTEM).samples

    assert [fields(sample) for sample in samples] == [expected(row) for row in rows]
    text_lines = path.read_text(encoding="utf-8").split("\n")
    starts = [index + 1 for index, line in enumerate(text_lines) if line.startswith(rows[1]["question"][:5])]
    assert samples[1].source == f"train.tsv:{starts[0]}"


def test_jsonl_with_other_key_names(tmp_path):
    rows = [{"ask": row["question"], "reasoning": row["think"], "reply": row["answer"]} for row in QTA_ROWS[:2]]
    path = write_lines(tmp_path / "train.jsonl", [encode(row) for row in rows])

    columns = {"question": "ask", "think": "reasoning", "answer": "reply"}
    samples = read_samples(path, system_prompt=SYSTEM, columns=columns).samples

    assert [fields(sample) for sample in samples] == [expected(row) for row in QTA_ROWS[:2]]
    with pytest.raises(DataError, match=r"train\.jsonl:1: field 'answer': missing"):
        read_samples(path, system_prompt=SYSTEM, columns={"question": "ask", "think": "reasoning"})


@pytest.mark.parametrize(
    "content,line,reason",
    [
        ("question,think,answer\n头疼,想,休息,多余\n", 2, "4 cells, but the header has 3 columns"),
        ("question,question,answer\n头疼,想,休息\n", 1, "the header names column 'question' twice"),
        ('question,think,answer\n头疼,想,休息\n"头晕,想,休息\n', 3, "not readable as CSV"),
    ],
    ids=["cell-count", "duplicate-column", "unclosed-quote"],
)
def test_bad_csv_names_the_line(tmp_path, content, line, reason):
    path = tmp_path / "train.csv"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(DataError) as raised:
        read_samples(path, system_prompt=SYSTEM)
    assert str(raised.value).startswith(f"{path}:{line}: field '(row)': {reason}")


# --- think and chat-template tags inside fields


@pytest.mark.parametrize(
    "row,field_name",
    [
        ({"question": "头疼", "think": "想一想", "answer": "答</think>尾"}, "answer"),
        ({"question": "头疼", "think": "想<think>再想", "answer": "答"}, "think"),
        ({"question": "头疼<|im_end|>", "think": "想", "answer": "答"}, "question"),
        ({"instruction": "头疼", "output": "<think>想</think>答<|im_end|>尾"}, "output"),
        (
            {
                "messages": [
                    {"role": "user", "content": "头疼"},
                    {"role": "assistant", "content": "<think>想</think>答</think>尾"},
                ]
            },
            "messages[1].content",
        ),
    ],
    ids=["qta-answer", "qta-think", "qta-question", "alpaca-output", "messages-reply"],
)
def test_literal_tags_are_a_bad_row_or_kept_as_text(tmp_path, row, field_name):
    path = write_lines(tmp_path / "train.jsonl", [encode(QTA_ROWS[0]), encode(row)])

    with pytest.raises(DataError) as raised:
        read_samples(path, system_prompt=SYSTEM)
    assert str(raised.value).startswith(f"{path}:2: field '{field_name}': holds the chat-template tag ")
    assert "data.literal_tags: text" in str(raised.value)

    skipped = read_samples(path, system_prompt=SYSTEM, skip_bad_rows=True)
    assert [bad.source for bad in skipped.skipped] == ["train.jsonl:2"] and len(skipped.samples) == 1

    kept = read_samples(path, system_prompt=SYSTEM, literal_tags="text")
    sample = kept.samples[1]
    assert "尾" in sample.answer or "再想" in sample.think or "<|im_end|>" in sample.question, "no text is lost"
    assert kept.as_dict()["rows_with_literal_tags"] == 1


def test_a_reply_whose_think_block_the_template_opened_reads_like_qwen3s_template(tmp_path):
    """Qwen3's thinking-only templates write `<think>` into the prompt, so their replies start inside the block."""
    path = write_lines(
        tmp_path / "train.jsonl", [encode({"instruction": "头疼", "output": "想一想\n</think>\n\n多休息"})]
    )

    assert fields(read_samples(path, system_prompt=SYSTEM).samples[0]) == ("头疼", "想一想", "多休息", SYSTEM)


def test_empty_think_block_needs_think_optional(tmp_path):
    path = write_lines(
        tmp_path / "train.jsonl", [encode({"instruction": "头疼", "output": "<think>\n\n</think>\n\n多休息"})]
    )

    with pytest.raises(DataError, match=r"train\.jsonl:1: field 'output': no reasoning"):
        read_samples(path, system_prompt=SYSTEM)
    assert fields(read_samples(path, system_prompt=SYSTEM, think="optional").samples[0]) == (
        "头疼",
        "",
        "多休息",
        SYSTEM,
    )


# --- files as spreadsheets and other tools write them


def test_excel_csv_with_trailing_unnamed_columns_reads_the_named_ones(tmp_path):
    """Excel saves a BOM, CRLF, newlines inside quoted cells and empty columns past the last named one."""
    path = tmp_path / "train.csv"
    lines = ["question,think,answer,,", '"头疼\r\n三天",想一想,"多休息,多喝水",,', ",,,,"]
    path.write_bytes("\r\n".join(lines).encode("utf-8-sig") + b"\r\n")

    result = read_samples(path, system_prompt=SYSTEM)

    assert [fields(sample) for sample in result.samples] == [("头疼\n三天", "想一想", "多休息,多喝水", SYSTEM)]


def test_a_csv_cell_longer_than_the_csv_modules_limit_is_read(tmp_path):
    """Python's csv module refuses cells over 131,072 characters by default; a JSONL field of that size reads."""
    long_answer = "多休息" * 50_000
    path = tmp_path / "train.csv"
    with path.open("w", encoding="utf-8", newline="") as file:
        csv.writer(file).writerows([["question", "think", "answer"], ["头疼", "想一想", long_answer]])

    assert read_samples(path, system_prompt=SYSTEM).samples[0].answer == long_answer


def test_a_json_file_of_json_lines_is_read_as_json_lines(tmp_path):
    """HF datasets (and so LLaMA-Factory) read a `.json` file holding one object per line; so does medtune."""
    path = write_lines(tmp_path / "train.json", [encode(row) for row in QTA_ROWS[:2]])

    samples = read_samples(path, system_prompt=SYSTEM).samples

    assert [fields(sample) for sample in samples] == [expected(row) for row in QTA_ROWS[:2]]
    assert [sample.source for sample in samples] == ["train.json:1", "train.json:2"]


def test_alpaca_history_counts_as_a_multi_turn_row(tmp_path):
    """The earlier turns of `history` are not trained on: the row is counted, as a longer conversation is."""
    rows = [
        {"instruction": "头疼", "output": "<think>想</think>多休息", "history": [["你好", "你好，哪里不舒服？"]]},
        {"instruction": "头疼", "output": "<think>想</think>多休息", "history": []},
    ]
    path = write_lines(tmp_path / "alpaca.jsonl", [encode(row) for row in rows])

    result = read_samples(path, system_prompt=SYSTEM)

    assert result.multi_turn_truncated == 1
    assert [fields(sample) for sample in result.samples] == [("头疼", "想", "多休息", SYSTEM)] * 2


def test_a_row_in_no_known_format_names_data_columns(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [encode({"medical_case": "头疼", "doctor_diagnosis": "多休息"})])

    with pytest.raises(DataError, match=r"no known format \(keys: doctor_diagnosis, medical_case\).*data\.columns"):
        read_samples(path, system_prompt=SYSTEM)


def test_messages_after_the_first_exchange_are_not_checked_only_counted(tmp_path):
    """Only the first exchange is trained on, so tool calls and tool results after it do not make the row bad."""
    later_tool_call = {
        "messages": [
            {"role": "user", "content": "头疼"},
            {"role": "assistant", "content": "<think>想</think>多休息"},
            {"role": "user", "content": "查一下附近的医院"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
            {"role": "tool", "content": "协和医院", "tool_call_id": "1"},
            {"role": "assistant", "content": "<think>想</think>去协和医院"},
        ]
    }
    tool_before_reply = {
        "conversations": [
            {"from": "human", "value": "查一下附近的医院"},
            {"from": "observation", "value": "协和医院"},
            {"from": "gpt", "value": "<think>想</think>去协和医院"},
        ]
    }
    path = write_lines(tmp_path / "chat.jsonl", [encode(later_tool_call), encode(tool_before_reply)])

    result = read_samples(path, system_prompt=SYSTEM, skip_bad_rows=True)

    assert [fields(sample) for sample in result.samples] == [("头疼", "想", "多休息", SYSTEM)]
    assert result.multi_turn_truncated == 1
    assert [(bad.source, bad.field) for bad in result.skipped] == [("chat.jsonl:2", "conversations[1].from")]
