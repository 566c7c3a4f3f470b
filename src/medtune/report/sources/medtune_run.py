"""medtune run folders: metrics.jsonl, config.resolved.yaml, summary.json and eval.json (docs/DESIGN.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medtune.report.inputs import Note, ReportError, Run, Source, parse_json_object, read_json_object

METRICS_FILE = "metrics.jsonl"


def is_run_folder(path: Path) -> bool:
    return (path / METRICS_FILE).is_file()


def load_run_folder(folder: Path) -> Run:
    records = read_metrics(folder / METRICS_FILE)
    config_path = folder / "config.resolved.yaml"
    if not config_path.is_file():
        raise ReportError(f"{config_path}: missing; a medtune run folder writes it at the start of training")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ReportError(f"{config_path}: invalid YAML: {err}") from None
    if not isinstance(config, dict):
        raise ReportError(f"{config_path}: expected a mapping of config keys, got {type(config).__name__}")
    notes: list[Note] = []
    summary = _optional_json(folder / "summary.json", notes)
    evaluation = _optional_json(folder / "eval.json", notes)
    name = config.get("run_name") or summary.get("run_name") or folder.name
    return Run(str(name), records, config, summary, evaluation, Source("medtune_run", str(folder)), notes)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every line must be a JSON object with an integer `step`; anything else names the file and line."""
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = parse_json_object(line.rstrip("\r\n"), str(path), number)
            step = record.get("step")
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                raise ReportError(f"{path}:{number}: `step` must be a non-negative integer, got {step!r}")
            records.append(record)
    if not records:
        raise ReportError(f"{path}: no metric records")
    return records


def _optional_json(path: Path, notes: list[Note]) -> dict[str, Any]:
    if not path.is_file():
        notes.append(Note("missing_file", {"name": path.name}))
        return {}
    return read_json_object(path)
