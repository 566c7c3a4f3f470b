"""Numbers as a person reads them: nested records flattened into one table row per number, rounded once."""

from __future__ import annotations

from typing import Any


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"token_length": {"p50": 1}} -> {"token_length p50": 1}; lists stay whole (they are listed, not tabled)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key} "))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def cell(value: Any) -> str:
    """Whole numbers with thousands separators; from 100 up one decimal; below, four significant digits."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer():
            return f"{value:,.0f}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def columns_table(title: str, columns: dict[str, dict[str, Any]]):
    """One column per record (e.g. per split), one row per number; lists are left out for the caller to list."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right", overflow="fold")
    keys = dict.fromkeys(
        key for column in columns.values() for key, value in column.items() if not isinstance(value, list)
    )
    for key in keys:
        table.add_row(key.replace("_", " "), *(cell(column.get(key, "")) for column in columns.values()))
    return table
