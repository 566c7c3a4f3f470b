"""The run folder (docs/DESIGN.md, "A run folder"): what `medtune train` writes and `report/`, `infer/` and
`medtune ablate` read.

This module is the one place that spells its file names, reads its records and writes its files atomically,
so the trainer, the readers and the docs cannot drift apart. It imports no medtune package (only `config.py`
for YAML files), so reading a run never imports the trainer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.config import read_yaml_mapping

CONFIG_FILE = "config.resolved.yaml"
ENV_FILE = "env.json"
DATA_STATS_FILE = "data_stats.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TRAIN_LOG_FILE = "train.log"
ADAPTER_DIR = "adapter"
"""The final adapter's folder, and the name `medtune eval` gives it (a checkpoint is named by its folder)."""
RUN_SETUP_FILES = {CONFIG_FILE, ENV_FILE, DATA_STATS_FILE, SUMMARY_FILE, TRAIN_LOG_FILE}
"""What a run writes in its folder before its first logged step: a folder holding only these is not in the way."""
CHECKPOINTS_DIR = "checkpoints"
EVAL_PREFIX, EVAL_BASE = "eval", "base"
STAGING_SUFFIX = ".tmp"
"""A folder or file is written under its name plus this suffix, then renamed: a half-written one never has its name."""

# ---- inside an adapter folder (adapter/ and every checkpoint) ------------------------------------------------
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's name
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # PEFT's name
ADAPTER_FACTS_FILE = "medtune_adapter.json"
"""What inference needs beyond PEFT's config: the base model's source, its quantization, how embeddings were trained."""
STATE_TENSORS_FILE = "training_state.safetensors"
STATE_JSON_FILE = "training_state.json"
"""Written after the tensors: its presence marks a checkpoint's training state complete."""
LEGACY_STATE_FILE = "training_state.pt"
"""The pickled training state of earlier medtune versions."""

STEP_DIR = re.compile(r"^step-(\d{6,})$")


class RunFolderError(ValueError):
    """A file of a run folder cannot be read; the message names the file, the line and the problem."""


class _Entry:
    """A file or folder of the run folder as an attribute: `RunFolder(path).summary` is `path / "summary.json"`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, folder: RunFolder, owner: type | None = None) -> Path:
        return folder.path / self.name


@dataclass(frozen=True)
class RunFolder:
    """Paths and reads of one run folder (`runs/<run_name>/`); nothing is read until a method asks."""

    path: Path
    config = _Entry(CONFIG_FILE)
    env = _Entry(ENV_FILE)
    data_stats = _Entry(DATA_STATS_FILE)
    metrics = _Entry(METRICS_FILE)
    summary = _Entry(SUMMARY_FILE)
    train_log = _Entry(TRAIN_LOG_FILE)
    adapter = _Entry(ADAPTER_DIR)
    checkpoints = _Entry(CHECKPOINTS_DIR)

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)

    def evaluation(
        self, checkpoint: str | None = ADAPTER_DIR, data_stem: str | None = None, first: int | None = None
    ) -> Path:
        """Where `medtune eval` writes: eval.json for the final adapter, eval.step-000400.json for a checkpoint,
        eval.base.json for the base model alone (`checkpoint` None); on another data file, its stem after `eval.`
        (eval.val.json, eval.val.step-000400.json, eval.val.base.json); on its `first` rows only (`--limit`),
        `first-N` after that (eval.first-8.json), so a quick look never replaces a whole evaluation."""
        which = [] if checkpoint == ADAPTER_DIR else [EVAL_BASE if checkpoint is None else checkpoint]
        parts = [EVAL_PREFIX, *([data_stem] if data_stem else []), *([f"first-{first}"] if first else []), *which]
        return self.path / (".".join(parts) + ".json")

    def other_files(self) -> list[str]:
        """Names in the folder that no run writes before its first logged step (RUN_SETUP_FILES), sorted."""
        if not self.path.is_dir():
            return []
        return sorted(path.name for path in self.path.iterdir() if path.name not in RUN_SETUP_FILES)

    def holds_run(self) -> bool:
        """A run has trained (or started to) in this folder: training there again needs --resume or --overwrite."""
        return self.metrics.exists() or self.checkpoints.exists()

    def read_summary(self) -> dict[str, Any]:
        """The run's summary.json, or {} before a run wrote one."""
        return read_json_object(self.summary) if self.summary.exists() else {}

    def run_complete(self) -> bool:
        """The run in this folder finished: its summary.json says so."""
        return self.read_summary().get("status") == "complete"

    def read_config(self) -> dict[str, Any]:
        """The resolved config as a nested mapping (not validated: a report reads runs of older medtune versions)."""
        if not self.config.is_file():
            raise RunFolderError(f"{self.config}: missing; a medtune run folder writes it at the start of training")
        return read_yaml_mapping(self.config, kind="resolved config", error=RunFolderError)

    def read_metrics(self, numbers: Collection[str] = ()) -> list[dict[str, Any]]:
        """Every line must be a JSON object with a non-negative integer `step`, and each key of `numbers` it holds a
        number (or null); anything else names file, line and key."""
        if not self.metrics.is_file():
            raise RunFolderError(f"{self.metrics}: missing; training appends a record to it every logging step")
        records = []
        with self.metrics.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                record = parse_json_object(line.rstrip("\r\n"), str(self.metrics), number)
                step = record.get("step")
                if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                    raise RunFolderError(
                        f"{self.metrics}:{number}: `step` must be a non-negative integer, got {step!r}"
                    )
                for key in numbers:
                    value = record.get(key)
                    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                        raise RunFolderError(f"{self.metrics}:{number}: `{key}` must be a number, got {value!r}")
                records.append(record)
        if not records:
            raise RunFolderError(f"{self.metrics}: no metric records")
        return records

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (renamed into place from their staging folder), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [
            (int(match.group(1)), child)
            for child in self.checkpoints.iterdir()
            if (match := STEP_DIR.match(child.name)) and child.is_dir()
        ]
        return sorted(found)

    def resumable_checkpoint(self) -> tuple[int, Path] | None:
        """The newest checkpoint that holds a training state: where `--resume` continues from."""
        resumable = [(step, folder) for step, folder in self.list_checkpoints() if has_training_state(folder)]
        return resumable[-1] if resumable else None

    def unresumable(self) -> str | None:
        """Why --resume cannot continue the run here though it holds checkpoints: none keeps a training state.
        Restarting from step 0, as --resume does in a folder with no checkpoint yet, would delete their adapters."""
        checkpoints = self.list_checkpoints()
        if not checkpoints or self.resumable_checkpoint() is not None:
            return None
        return (
            f"{self.path} holds checkpoints (steps {', '.join(str(step) for step, _ in checkpoints)}) but none holds "
            "the training state --resume needs (only the newest checkpoint keeps one, and it is gone): --overwrite "
            "deletes the run and trains again"
        )


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def staging(path: Path) -> Path:
    """The name a folder is written under before it is renamed to `path`."""
    return path.with_name(path.name + STAGING_SUFFIX)


def has_training_state(checkpoint: Path) -> bool:
    return (checkpoint / STATE_JSON_FILE).exists() or (checkpoint / LEGACY_STATE_FILE).exists()


def is_adapter_folder(folder: Path) -> bool:
    """A PEFT adapter: the final one, a checkpoint, or a folder the user names."""
    return (folder / ADAPTER_CONFIG_FILE).is_file()


# ---- reading and writing files ----------------------------------------------------------------------------
def read_json_object(path: Path, error: type[Exception] = RunFolderError) -> dict[str, Any]:
    """A JSON file that must hold an object; `error` (naming the file and line) when it does not."""
    return parse_json_object(path.read_text(encoding="utf-8"), str(path), error=error)


def parse_json_object(
    text: str, where: str, first_line: int = 1, error: type[Exception] = RunFolderError
) -> dict[str, Any]:
    """Text that must be one JSON object, found in `where` from line `first_line` on; errors say `where:line:`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        line = first_line + err.lineno - 1
        raise error(f"{where}:{line}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(data, dict):
        raise error(f"{where}:{first_line}: expected a JSON object, got {type(data).__name__}")
    return data


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file;
    a failed write leaves the old file (if any) and no temporary one."""
    tmp = path.with_name(f".{path.name}{STAGING_SUFFIX}")
    try:
        tmp.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def umask_permissions(folder: Path) -> None:
    """safetensors (0.8) writes a weight file through a temporary file created with mode 0600 and renamed into
    place (safetensors#782); give it the mode open() gives the folder's other files: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for weights in folder.glob("*.safetensors"):
        weights.chmod(0o666 & ~umask)
