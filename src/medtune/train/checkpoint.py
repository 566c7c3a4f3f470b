"""Self-describing checkpoints: `checkpoints/step-000400/` holds the PEFT adapter, the tokenizer, the
resolved config and `training_state.pt` (optimizer, scheduler, RNG, data position). Each is written to a
`.tmp` folder and renamed, so a crash never leaves a half checkpoint that resume would pick up."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "training_state.pt"
STEP_DIR = re.compile(r"^step-(\d{6,})$")


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def holds_run(run_dir: Path) -> bool:
    """A run has trained (or started to) in this folder: training there again needs --resume or --overwrite."""
    return (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()


def run_complete(run_dir: Path) -> bool:
    """The run in this folder finished: its summary.json says so."""
    summary = run_dir / "summary.json"
    return summary.exists() and json.loads(summary.read_text(encoding="utf-8")).get("status") == "complete"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed into place, state file present), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).exists():
            found.append((int(match.group(1)), child))
    return sorted(found)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, write_contents, keep_last: int) -> Path:
    """Call `write_contents(folder)` on a temporary folder, rename it to step-XXXXXX, prune old ones."""
    final = step_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_contents(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
