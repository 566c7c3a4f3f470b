"""HF Trainer checkpoints: `trainer_state.json` (`log_history`) plus, when present, the JSON configs beside it
(`training_args.json`, the model's `config.json`, PEFT's `adapter_config.json`).

`training_args.bin` is a pickle, which is never unpickled here (it can run code); save
`TrainingArguments.to_dict()` as `training_args.json` next to it to give the report the config.
"""

from __future__ import annotations

import re
from pathlib import Path

from medtune.report.inputs import Note, ReportError, Run, Source, read_json_object
from medtune.report.sources.hf import config_from_hf, map_lora
from medtune.run_folder import ADAPTER_CONFIG_FILE, RunFolder

STATE_FILE = "trainer_state.json"
CONFIG_FILES = {
    "training_args": "training_args.json",
    "model_config": "config.json",
    "adapter_config": ADAPTER_CONFIG_FILE,
}
"""JSON files beside trainer_state.json that give the config (`Run.imported_config` keeps them under these names)."""
_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


def find_state_file(path: Path) -> Path | None:
    """The file itself, the folder's own, or the one in its latest `checkpoint-N/`."""
    if path.is_file():
        return path if path.name == STATE_FILE else None
    if (path / STATE_FILE).is_file():
        return path / STATE_FILE
    checkpoints = [
        (int(m.group(1)), child) for child in path.glob("checkpoint-*") if (m := _CHECKPOINT.search(child.name))
    ]
    latest = [child / STATE_FILE for _, child in sorted(checkpoints, reverse=True) if (child / STATE_FILE).is_file()]
    return latest[0] if latest else None


def load_trainer_state(state_path: Path) -> Run:
    state = read_json_object(state_path)
    history = state.get("log_history")
    if not isinstance(history, list):
        raise ReportError(f"{state_path}: no `log_history` list")
    records = []
    for index, entry in enumerate(history):
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
            raise ReportError(f"{state_path}: log_history[{index}] is not an object with an integer `step`")
        records.append(entry)
    folder = state_path.parent
    notes = [Note("trainer_no_summary")]
    imported = {
        name: read_json_object(folder / file) for name, file in CONFIG_FILES.items() if (folder / file).is_file()
    }
    # merged as HF's SwanLab callback merges them, so every importer maps the same dict
    config, mapping_notes = config_from_hf(
        {**imported.get("model_config", {}), **imported.get("training_args", {})}, str(folder)
    )
    notes.extend(mapping_notes)
    if "training_args" not in imported:
        pickled = (folder / "training_args.bin").is_file()
        notes.append(Note("training_args_pickle" if pickled else "no_training_args", {"file": str(folder)}))
    if "adapter_config" in imported:
        map_lora(imported["adapter_config"], config, notes, {"file": str(folder / CONFIG_FILES["adapter_config"])})
    summary = {"max_steps": state["max_steps"]} if isinstance(state.get("max_steps"), int) else {}
    evaluation_file = RunFolder(folder).evaluation()
    evaluation = read_json_object(evaluation_file) if evaluation_file.is_file() else {}
    run_folder = folder.parent if _CHECKPOINT.search(folder.name) else folder
    name = config.get("run_name") or run_folder.name
    return Run(
        str(name), records, config, summary, evaluation, Source("trainer_state", str(state_path)), notes, imported
    )
