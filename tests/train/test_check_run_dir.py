"""What `train` may do with a run folder that holds a run, decided before anything is loaded or deleted
(`train/recipe.check_run_dir`, which `train --processes` also asks)."""

from __future__ import annotations

import json

import pytest
from tests.conftest import tiny_config

from medtune.run_folder import ADAPTER_CONFIG_FILE, RunFolder
from medtune.train.checkpoint import save_training_state
from medtune.train.preflight import preflight
from medtune.train.recipe import RunExistsError, check_run_dir


def interrupted_run(cfg, steps_saved: list[int], resumable: bool) -> RunFolder:
    """A run stopped after saving checkpoints of `steps_saved`, the newest with its training state if `resumable`."""
    folder = RunFolder(cfg.run_dir())
    folder.path.mkdir(parents=True)
    folder.metrics.write_text("".join(json.dumps({"step": step, "loss": 1.0}) + "\n" for step in steps_saved))
    folder.summary.write_text(json.dumps({"status": "interrupted", "step": steps_saved[-1]}))
    for step in steps_saved:
        checkpoint = folder.checkpoint(step)
        checkpoint.mkdir(parents=True)
        (checkpoint / ADAPTER_CONFIG_FILE).write_text("{}")
    if resumable:
        save_training_state(folder.checkpoint(steps_saved[-1]), {"step": steps_saved[-1]})
    return folder


def files_of(folder: RunFolder) -> list[str]:
    return sorted(str(path.relative_to(folder.path)) for path in folder.path.rglob("*"))


def test_resume_never_restarts_over_checkpoints_that_hold_no_training_state(tmp_path, short_rows_file):
    """Only the newest checkpoint keeps what --resume needs; once it is gone (deleted after a damaged state), the
    older ones still hold trained adapters: --resume must not take them for "no checkpoint yet" and delete the run
    to start from step 0."""
    cfg = tiny_config("v1", tmp_path, short_rows_file)
    folder = interrupted_run(cfg, [2, 4], resumable=False)
    before = files_of(folder)
    with pytest.raises(RunExistsError) as refused:
        check_run_dir(cfg, resume=True, overwrite=False)
    message = str(refused.value)
    assert message.startswith(f"{folder.path} holds checkpoints (steps 2, 4) but none holds the training state")
    assert "--overwrite" in message and "\n" not in message
    assert files_of(folder) == before
    check_run_dir(cfg, resume=False, overwrite=True)  # starting again is still possible, when asked for
    (finding,) = [finding for finding in preflight(cfg) if finding.check == "run folder"]
    assert (finding.level, finding.message) == ("warn", str(refused.value)), "check says what train --resume says"


def test_resume_with_overwrite_is_refused_as_contradictory(tmp_path, short_rows_file):
    """--overwrite was ignored next to --resume: an unfinished run was continued, with a config that --resume alone
    refuses (another lr), so the run was trained by two configs and described by neither."""
    cfg = tiny_config("v1", tmp_path, short_rows_file)
    folder = interrupted_run(cfg, [2], resumable=True)
    folder.config.write_text("run_name: v1\n")  # any stored config: the flags are refused before it is compared
    before = files_of(folder)
    with pytest.raises(RunExistsError, match=r"^--resume and --overwrite: choose one \(--resume continues"):
        check_run_dir(cfg, resume=True, overwrite=True)
    assert files_of(folder) == before
