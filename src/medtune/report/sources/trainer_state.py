"""HF Trainer checkpoints: `trainer_state.json` (`log_history`) plus, when present, JSON configs beside it.

`training_args.bin` is a pickle, which is never unpickled here (it can run code); save
`TrainingArguments.to_dict()` as `training_args.json` next to it to give the report the config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medtune.report.runs import ReportError, Run, read_json_object
from medtune.report.sources.hf import config_from_training_args

STATE_FILE = "trainer_state.json"
ADAPTER_TO_CONFIG = {"r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target_modules", "modules_to_save": "modules_to_save"}
_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


def find_state_file(path: Path) -> Path | None:
    """The file itself, the folder's own, or the one in its latest `checkpoint-N/`."""
    if path.is_file():
        return path if path.name == STATE_FILE else None
    if (path / STATE_FILE).is_file():
        return path / STATE_FILE
    checkpoints = [(int(m.group(1)), child) for child in path.glob("checkpoint-*") if (m := _CHECKPOINT.search(child.name))]
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
    notes = ["HF Trainer checkpoints carry no summary.json (random_weights unknown)"]
    config: dict[str, Any] = {}
    if (folder / "training_args.json").is_file():
        config = config_from_training_args(read_json_object(folder / "training_args.json"))
    else:
        reason = "training_args.bin is a pickle and is not read" if (folder / "training_args.bin").is_file() else "no training_args"
        notes.append(f"{reason}: schedule, LR and clipping threshold unknown (save TrainingArguments.to_dict() as training_args.json)")
    if (folder / "adapter_config.json").is_file():
        adapter = read_json_object(folder / "adapter_config.json")
        config["lora"] = {ours: adapter[theirs] for theirs, ours in ADAPTER_TO_CONFIG.items() if theirs in adapter}
    if (folder / "config.json").is_file():
        config["model_config"] = read_json_object(folder / "config.json")
    summary = {"max_steps": state["max_steps"]} if isinstance(state.get("max_steps"), int) else {}
    evaluation = read_json_object(folder / "eval.json") if (folder / "eval.json").is_file() else {}
    run_folder = folder.parent if _CHECKPOINT.search(folder.name) else folder
    name = config.get("run_name") or run_folder.name
    return Run(str(name), records, config, summary, evaluation, f"HF trainer_state {state_path}", notes)

