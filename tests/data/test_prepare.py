"""`prepare_data` (what `data stats`, `data preview` and training read): the data settings reach the reader,
and every data or lexicon problem is medtune's own one-line error naming file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import CONFIGS

from medtune.config import load_config
from medtune.data.formats import DataError
from medtune.data.lexicon import LexiconError
from medtune.data.prepare import prepare_data

FIXTURES = Path(__file__).parent / "fixtures"
TOYHOM_CSV = FIXTURES / "toyhom_internal_medicine_8.gb18030.csv"


def _config(*overrides: str):
    return load_config(
        CONFIGS / "v1.yaml",
        ["data.max_length=512", "speed.packed_row_tokens=null", *overrides],
        overlays=[CONFIGS / "tiny.yaml"],
    )


def test_csv_settings_reach_the_reader_and_the_stats(tokenizer):
    cfg = _config(
        f"data.train={TOYHOM_CSV}", "data.encoding=gb18030", "data.columns={question: ask}", "data.think=optional"
    )

    stats = prepare_data(cfg, tokenizer).stats

    assert stats["files"]["train"]["rows"] == 8 and stats["files"]["train"]["rows_without_think"] == 8
    assert stats["train"]["rows"] + stats["validation"]["rows"] == 8


@pytest.mark.parametrize(
    "name,content,overrides,error,start",
    [
        ("bad.jsonl", b'{"question": "q",\n', [], DataError, "bad.jsonl:1: field '(row)': invalid JSON"),
        ("empty.jsonl", b"", [], DataError, "empty.jsonl: no rows"),
        ("rows.xlsx", b"PK\x03\x04", [], DataError, "rows.xlsx: unsupported file type '.xlsx'"),
        (
            "gb.csv",
            "question,think,answer\n头疼,想,休息\n".encode("gb18030"),
            [],
            DataError,
            "gb.csv:2: field '(row)': not valid UTF-8",
        ),
        (
            "lexicon.bin",
            b"\x00\x01\x02\x03",
            ["augment.enabled=true"],
            LexiconError,
            "lexicon.bin:1: control character U+0000",
        ),
    ],
    ids=["invalid-json", "empty-file", "unsupported-type", "undeclared-encoding", "binary-lexicon"],
)
def test_bad_input_is_one_line_naming_the_file(tmp_path, tokenizer, name, content, overrides, error, start):
    path = tmp_path / name
    path.write_bytes(content)
    lexicon = [
        f"augment.lexicon={path}",
        f"data.train={FIXTURES / 'medicalgpt_sft_sharegpt_5.jsonl'}",
        "data.think=optional",
    ]
    target = lexicon if error is LexiconError else [f"data.train={path}"]

    with pytest.raises(error) as raised:
        prepare_data(_config(*target, *overrides), tokenizer)

    message = str(raised.value)
    assert message.startswith(f"{tmp_path}/{start}") and "\n" not in message
