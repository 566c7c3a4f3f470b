"""SwanLab local logs: a `swanlog/` folder of `run-*/` folders, as SwanLab 0.4.x and 0.10.x leave them.

- 0.4.x (the reference experiment's release; also 0.10 in `local` mode with its dashboard) keeps values in
  `run-*/logs/<folder>/*.log` (JSON lines `{"index": step, "data": value}`) and the metric key of each
  folder in the dashboard's SQLite file `swanlog/runs.swanlab` (tables `experiment`, `tag`).
- 0.8+ writes every record to `run-*/run-<id>.swanlab` (a LevelDB-style log of protobuf records), read here
  with SwanLab's own reader, so reading it needs the `swanlab` package.
Both keep the config in `run-*/files/config.yaml` as `{key: {desc, sort, value}}`.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from medtune.config import read_yaml_mapping
from medtune.report.inputs import Note, ReportError, Run, Source
from medtune.report.sources.hf import config_from_hf, is_training_args, records_from_points

DASHBOARD_DB = "runs.swanlab"


def is_swanlog(path: Path) -> bool:
    """A swanlog folder, or one `run-*` folder inside it."""
    return (
        (path / DASHBOARD_DB).is_file() or any(_is_run_dir(child) for child in path.glob("run-*")) or _is_run_dir(path)
    )


def load_swanlog(path: Path) -> list[Run]:
    """The runs of a swanlog folder by name (`v2` before `v10`), runs of one name by start time, so the first
    version, the default baseline, does not depend on the random ids in the folder names."""
    run_dirs = [path] if _is_run_dir(path) else sorted(child for child in path.glob("run-*") if _is_run_dir(child))
    if not run_dirs:
        raise ReportError(f"{path}: no SwanLab run folders (run-*/ with files/config.yaml) inside")
    # run-<YYYYMMDD_HHMMSS>-<id>/: sorted folders are in start order, which the stable sort keeps within a name
    return sorted((_load_run_dir(run_dir) for run_dir in run_dirs), key=lambda run: _natural_key(run.name))


def _natural_key(name: str) -> list[int | str]:
    """Digit runs compare as numbers: `v2-seed1` < `v10-seed1`. Text and digits alternate, so types never mix."""
    return [int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", name))]


def _is_run_dir(path: Path) -> bool:
    return (
        path.name.startswith("run-")
        and (path / "files").is_dir()
        and ((path / "logs").is_dir() or any(path.glob("run-*.swanlab")))
    )


def _load_run_dir(run_dir: Path) -> Run:
    record_files = sorted(run_dir.glob("run-*.swanlab"))
    database = run_dir.parent / DASHBOARD_DB
    if record_files and (_swanlab_reader_available() or not database.is_file()):
        name, points, notes = _read_record_file(record_files[0])
        source = Source("swanlab_run_file", str(record_files[0]))
    elif database.is_file():
        (name, points), notes = _read_dashboard_logs(run_dir, database), []
        source = Source("swanlab_local_log", str(run_dir))
    else:
        raise ReportError(f"{run_dir}: neither a run-<id>.swanlab record file nor {database} to name its metrics")
    config_path = run_dir / "files" / "config.yaml"
    logged_config = _read_config(config_path)
    notes.append(Note("tracker_no_summary", {"tracker": "SwanLab"}))
    imported: dict[str, Any] = {}
    if is_training_args(logged_config):  # HF's SwanLab callback: TrainingArguments, the model config and peft_config
        config, mapping_notes = config_from_hf(logged_config, str(config_path))
        notes.extend(mapping_notes)
        imported = {"swanlab_config": logged_config}
    else:
        config = logged_config
        if not all(
            isinstance(config.get(section), dict) for section in ("train", "lora")
        ):  # medtune's own config is nested
            notes.append(Note("config_not_recognised", {"file": str(config_path)}))
    records = records_from_points(points)
    if not records:
        raise ReportError(f"{run_dir}: no scalar metrics logged")
    return Run(name or run_dir.name, records, config, {}, {}, source, notes, imported)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ReportError(f"{path}: missing (SwanLab writes the run's config there)")
    raw = read_yaml_mapping(path, kind="SwanLab config", error=ReportError)
    return {
        key: entry["value"] if isinstance(entry, dict) and "value" in entry else entry for key, entry in raw.items()
    }


def _read_dashboard_logs(run_dir: Path, database: Path) -> tuple[str, list[tuple[str, int, float]]]:
    """Key names from the dashboard's SQLite file, values from logs/<folder>/*.log."""
    with tempfile.TemporaryDirectory() as scratch:
        # copy the file with its -wal/-shm companions: opening the original read-only fails while a WAL is pending,
        # and opening it writable would change the user's log
        for companion in (
            database,
            database.with_name(DASHBOARD_DB + "-wal"),
            database.with_name(DASHBOARD_DB + "-shm"),
        ):
            if companion.is_file():
                shutil.copy2(companion, Path(scratch) / companion.name)
        try:
            connection = sqlite3.connect(Path(scratch) / DASHBOARD_DB)
            try:
                experiment = connection.execute(
                    "SELECT id, name FROM experiment WHERE run_id = ?", (run_dir.name,)
                ).fetchone()
                tags = (
                    connection.execute(
                        "SELECT name, folder FROM tag WHERE experiment_id = ?", (experiment[0],)
                    ).fetchall()
                    if experiment
                    else []
                )
            finally:
                connection.close()
        except sqlite3.DatabaseError as err:
            raise ReportError(f"{database}: cannot read SwanLab's dashboard database: {err}") from None
    if experiment is None:
        raise ReportError(f"{database}: no experiment with run_id {run_dir.name!r}")
    points = []
    for key, folder in tags:
        for log_file in sorted(
            (run_dir / "logs" / str(folder)).glob("*.log"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0
        ):
            points.extend((key, step, value) for step, value in _read_log_lines(log_file))
    return str(experiment[1]), points


def _read_log_lines(path: Path) -> list[tuple[int, float]]:
    values = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            values.append((int(entry["index"]), float(entry["data"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ReportError(
                f'{path}:{number}: expected {{"index": step, "data": number}}, got {line[:80]!r} ({err})'
            ) from None
    return values


def _swanlab_reader_available() -> bool:
    try:
        import swanlab.proto.swanlab.record.v1.record_pb2  # noqa: F401
        import swanlab.sdk.internal.core_python.store  # noqa: F401
    except ImportError:
        return False
    return True


def _read_record_file(path: Path) -> tuple[str, list[tuple[str, int, float]], list[Note]]:
    """Scalars of a record file, up to its last complete record (a running or crashed run ends mid-record)."""
    if not _swanlab_reader_available():
        raise ReportError(
            f"{path}: reading SwanLab >= 0.8 run files needs the swanlab package (pip install 'medtune[swanlab]')"
        )
    from google.protobuf.message import DecodeError
    from swanlab.exceptions import DataStoreError
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    reader = DataStoreReader()
    try:
        reader.open(path)
    except (DataStoreError, AssertionError) as err:
        raise ReportError(f"{path}: not a SwanLab record file: {err}") from None
    name, points, notes = "", [], []
    try:
        while (data := reader.scan()) is not None:
            record = Record()
            record.ParseFromString(data)
            if record.HasField("start"):
                name = record.start.name
            elif record.HasField("scalar"):
                points.append((record.scalar.key, int(record.scalar.step), float(record.scalar.value.number)))
    except (DataStoreError, AssertionError, DecodeError) as err:
        notes.append(Note("incomplete_record", {"file": str(path), "error": str(err)}))
    finally:
        reader.close()
    return name, points, notes
