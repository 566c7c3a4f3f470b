"""medtune run folders: metrics.jsonl, config.resolved.yaml, summary.json and eval.json, read through
`medtune.run_folder`; what it cannot read becomes a ReportError (docs/DESIGN.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.report.inputs import COMPARED_SERIES, Note, ReportError, Run, Source
from medtune.run_folder import RunFolder, RunFolderError, read_json_object


def is_run_folder(path: Path) -> bool:
    return RunFolder(path).metrics.is_file()


def load_run_folder(path: Path) -> Run:
    folder = RunFolder(path)
    notes: list[Note] = []
    try:
        records, config = folder.read_metrics(numbers=COMPARED_SERIES), folder.read_config()
        summary = _optional_json(folder.summary, notes)
        evaluation = _optional_json(folder.evaluation(), notes)
    except RunFolderError as err:  # a report's input: the report's exit code
        raise ReportError(str(err)) from None
    name = config.get("run_name") or summary.get("run_name") or path.name
    return Run(str(name), records, config, summary, evaluation, Source("medtune_run", str(path)), notes)


def _optional_json(path: Path, notes: list[Note]) -> dict[str, Any]:
    if not path.is_file():
        notes.append(Note("missing_file", {"name": path.name}))
        return {}
    return read_json_object(path)
