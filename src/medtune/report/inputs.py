"""The in-memory run every importer returns, and the small helpers the analysis reads it with.

Records use the metrics.jsonl key names of docs/DESIGN.md (`step`, `loss`, `grad_norm`, `learning_rate`,
`eval_loss`, `augment`, ...), so the analysis never needs to know where a run came from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medtune import run_folder
from medtune.config import flatten

COMPARED_SERIES = ("loss", "grad_norm", "learning_rate", "eval_loss")
"""The metrics the report compares; a record's value of one is a number (NaN and ±inf included) or absent. Two runs
whose logs agree on all of these trained alike: one run given twice, a copy, or a change that did nothing."""
SEED_SUFFIX = re.compile(r"(?:-seed\d+|_s\d+)$")
SourceKind = Literal["medtune_run", "swanlab_run_file", "swanlab_local_log", "tensorboard", "trainer_state"]
"""What a run was read from; the report words each kind as `source_<kind>` (wording.py)."""
NoteCode = Literal[
    "missing_file",
    "planned_from_epochs",
    "planned_unknown",
    "tracker_no_summary",
    "trainer_no_summary",
    "no_training_args",
    "training_args_pickle",
    "no_args_summary",
    "config_not_recognised",
    "incomplete_record",
    "adapters_other",
    "not_lora_config",
    "repr_syntax",
    "repr_too_deep",
    "repr_not_literal",
    "schedule_unknown",
    "constant_ignores_warmup",
    "optimizer_unknown",
]
"""What the report may say about a run's input; each code is worded as `note_<code>` (wording.py)."""


class ReportError(ValueError):
    """An input run cannot be read or the report cannot be built; the message names the file and the problem."""


@dataclass(frozen=True)
class Source:
    """Where a run was read from, as data, so that the report words it in its own language."""

    kind: SourceKind
    path: str


@dataclass(frozen=True)
class Note:
    """Something a run's input lacks or that could not be mapped, as data: `code` picks the words, `fields` fill
    them. A `file` field (and a `key` field, the config key concerned) say where; the report puts them first."""

    code: NoteCode
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """One training run, whatever wrote it.

    `config` is the resolved config as a nested dict in medtune's layout (importers map foreign configs onto it),
    `imported_config` the foreign config as its source stored it (empty for medtune runs), `notes` lists what
    could not be read or mapped, so the report can say what it is missing.
    """

    name: str
    records: list[dict[str, Any]]
    config: dict[str, Any]
    summary: dict[str, Any]
    eval: dict[str, Any]
    source: Source
    notes: list[Note] = field(default_factory=list)
    imported_config: dict[str, Any] = field(default_factory=dict)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of one metric, sorted by step; a later record for the same step wins (resumes)."""
        by_step: dict[int, float] = {}
        for record in self.records:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                by_step[int(record["step"])] = float(value)
        steps = np.array(sorted(by_step), dtype=int)
        return steps, np.array([by_step[s] for s in steps], dtype=float)

    def non_finite_steps(self, key: str) -> list[int]:
        """Steps at which the metric was logged as NaN or ±inf: `series` leaves them out, so the report must say so."""
        return sorted(
            {
                int(record["step"])
                for record in self.records
                if isinstance(value := record.get(key), float) and not math.isfinite(value)
            }
        )

    def setting(self, dotted_key: str) -> Any:
        """A value of the resolved config by dotted key (`train.lr`), or None when the run does not say."""
        node: Any = self.config
        for part in dotted_key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def max_steps(self) -> int | None:
        """Planned optimizer steps: the trainer's own count, or else the estimate from epochs; None when nothing
        says."""
        counted = self.counted_steps()
        if counted is not None:
            return counted
        estimate = self.steps_from_epochs()
        return estimate["planned"] if estimate else None

    def counted_steps(self) -> int | None:
        """Planned steps as a count: the trainer's own (summary.json's `max_steps`), or the config's
        `train.max_steps`."""
        for value in (self.summary.get("max_steps"), self.setting("train.max_steps")):
            if _count(value):
                return value
        return None

    def steps_from_epochs(self) -> dict[str, Any] | None:
        """`train.epochs` x the steps per epoch that the logged epoch counter shows, with the numbers it comes from
        (`planned`, `epochs`, `steps_per_epoch`, and the counter's `epoch` at `step`); None when either is missing."""
        epochs, counter = self.setting("train.epochs"), self._epoch_counter()
        if not is_number(epochs) or epochs <= 0 or counter is None:
            return None
        step, epoch = counter
        return {
            "planned": round(epochs * step / epoch),
            "epochs": epochs,
            "steps_per_epoch": step / epoch,
            "epoch": epoch,
            "step": step,
        }

    def _epoch_counter(self) -> tuple[int, float] | None:
        """(step, epoch) of the latest record with a positive epoch: the smallest relative error when epochs are
        rounded."""
        counted = [
            (int(record["step"]), float(record["epoch"]))
            for record in self.records
            if is_number(record.get("epoch")) and record["epoch"] > 0 and record["step"] > 0
        ]
        return max(counted) if counted else None


def is_number(value: Any) -> bool:
    """A finite int or float (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def version_of(run_name: str) -> str:
    """`v2-seed3` and `v2_s3` belong to version `v2`."""
    return SEED_SUFFIX.sub("", run_name) or run_name


def numeric_leaves(tree: Any) -> dict[str, float]:
    """The finite numbers of a nested dict by dotted key (booleans are not numbers here)."""
    return {key: float(value) for key, value in flatten(tree).items() if is_number(value)}


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; a ReportError names the file and line."""
    return run_folder.read_json_object(path, error=ReportError)


def parse_json_object(text: str, where: str, first_line: int = 1) -> dict[str, Any]:
    """Text that must be one JSON object, found in `where` from line `first_line` on; a ReportError says
    `where:line:`."""
    return run_folder.parse_json_object(text, where, first_line, error=ReportError)
