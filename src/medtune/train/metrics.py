"""Metric writers. The run's record is metrics.jsonl (one JSON object per line, flushed per line);
trackers such as SwanLab or TensorBoard receive the same records (and the config when they are
built) and are never required."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from medtune.run_folder import write_atomic


class MetricLogger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlLogger:
    """Appends records to metrics.jsonl; on resume, records after the checkpoint's step are dropped first."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= resume_step]
            write_atomic(path, "".join(line + "\n" for line in kept))
        elif resume_step is None and path.exists():
            path.unlink()
        self._file = path.open("a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # an unreadable (half-written) last line is dropped on resume
