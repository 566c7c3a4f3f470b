"""Importers: each turns what a trainer or tracker left on disk into `Run`s with metrics.jsonl key names."""

from __future__ import annotations

from pathlib import Path

from medtune.report.inputs import Note, ReportError, Run
from medtune.report.sources.medtune_run import is_run_folder, load_run_folder
from medtune.report.sources.swanlog import is_swanlog, load_swanlog
from medtune.report.sources.tfevents import is_event_folder, load_event_folders
from medtune.report.sources.trainer_state import find_state_file, load_trainer_state


def load_runs(path: Path) -> list[Run]:
    """Every run found at `path`: a medtune run folder, a swanlog folder (possibly several runs),
    an HF output or checkpoint folder (or its trainer_state.json), or TensorBoard event files."""
    runs = _load(path)
    for run in runs:
        _note_planned_steps(run)
    return runs


def _note_planned_steps(run: Run) -> None:
    """Say how planned steps were worked out when only epochs were given, or that they could not be."""
    if run.counted_steps() is not None:
        return
    estimate, epochs = run.steps_from_epochs(), run.setting("train.epochs")
    if estimate is not None:  # estimated, not a count the trainer wrote
        run.notes.append(Note("planned_from_epochs", estimate))
    elif epochs is not None:
        run.notes.append(Note("planned_unknown", {"epochs": epochs}))


def _load(path: Path) -> list[Run]:
    if not path.exists():
        raise ReportError(f"{path}: no such file or folder")
    if path.is_dir() and is_run_folder(path):
        return [load_run_folder(path)]
    if path.is_dir() and is_swanlog(path):
        return load_swanlog(path)
    state_file = find_state_file(path)
    if state_file is not None:
        return [load_trainer_state(state_file)]
    if is_event_folder(path):
        return load_event_folders(path)
    raise ReportError(
        f"{path}: not a run: expected a medtune run folder (metrics.jsonl), a swanlog folder, "
        "an HF trainer_state.json (or a folder with checkpoint-*/trainer_state.json) or TensorBoard event files"
    )
