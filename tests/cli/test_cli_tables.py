"""One rounding rule for the numbers the CLI shows."""

from __future__ import annotations

from rich.console import Console

from medtune.cli.tables import cell, columns_table, flatten


def test_numbers_are_rounded_once_and_readably():
    assert cell(955.0000000000001) == "955.0" and cell(1024.0) == "1,024" and cell(12345) == "12,345"
    assert cell(11.926340103) == "11.93" and cell(0.0123456) == "0.01235" and cell(151234.56) == "151,234.6"
    assert cell(True) == "true" and cell(None) == "none" and cell("medtune:x") == "medtune:x"


def test_nested_records_become_one_row_per_number_and_lists_are_left_out():
    record = {"rows": 3, "token_length": {"p50": 7.0, "by": {"x": 1}}, "truncated_rows": ["a:1"]}
    assert flatten(record) == {"rows": 3, "token_length p50": 7.0, "token_length by x": 1, "truncated_rows": ["a:1"]}
    console = Console(width=80, record=True)
    console.print(columns_table("t", {"train": flatten(record)}))
    text = console.export_text()
    assert "token length by x" in text and "a:1" not in text
