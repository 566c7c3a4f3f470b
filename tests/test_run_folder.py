"""The run folder's one owner: its names (as docs/DESIGN.md lists them), what counts as a run, a complete run and a
checkpoint, strict reading of its records, and atomic writing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medtune import run_folder
from medtune.run_folder import (
    LEGACY_STATE_FILE,
    STATE_JSON_FILE,
    STATE_TENSORS_FILE,
    RunFolder,
    RunFolderError,
    staging,
    write_atomic,
    write_json,
)

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"


def test_paths_have_the_documented_names(tmp_path):
    run = RunFolder(tmp_path)
    named = {
        run.config: "config.resolved.yaml",
        run.env: "env.json",
        run.data_stats: "data_stats.json",
        run.metrics: "metrics.jsonl",
        run.summary: "summary.json",
        run.train_log: "train.log",
        run.adapter: "adapter",
        run.checkpoints: "checkpoints",
        run.checkpoint(400): "checkpoints/step-000400",
        run.checkpoint(1_234_567): "checkpoints/step-1234567",
        staging(run.checkpoint(2)): "checkpoints/step-000002.tmp",
        run.evaluation(): "eval.json",
        run.evaluation("step-000400"): "eval.step-000400.json",
        run.evaluation(None): "eval.base.json",
    }
    assert {path: path.relative_to(tmp_path).as_posix() for path in named} == named


def test_every_name_is_in_the_design_docs_run_folder_section():
    section = DESIGN.read_text(encoding="utf-8").split("## A run folder", 1)[1].split("\n## ", 1)[0]
    names = [
        value for key, value in vars(run_folder).items() if key.endswith(("_FILE", "_DIR")) and isinstance(value, str)
    ]
    assert len(names) >= 13
    assert [name for name in names if f"`{name}" not in section] == []
    assert "run_folder.py" in section


def test_holds_run_needs_metrics_or_checkpoints(tmp_path):
    run = RunFolder(tmp_path / "v1")
    assert not run.holds_run()  # no folder at all
    run.path.mkdir()
    run.config.write_text("run_name: v1\n")
    assert not run.holds_run()  # a config alone is written before anything trains
    run.checkpoints.mkdir()
    assert run.holds_run()
    run.checkpoints.rmdir()
    run.metrics.write_text('{"step": 1, "loss": 2.0}\n')
    assert run.holds_run()


@pytest.mark.parametrize(
    "summary, complete",
    [
        (None, False),
        ({"status": "running", "step": 3}, False),
        ({"status": "interrupted"}, False),
        ({"status": "complete"}, True),
    ],
)
def test_run_complete_is_what_the_summary_says(tmp_path, summary, complete):
    run = RunFolder(tmp_path)
    if summary is not None:
        write_json(run.summary, summary)
    assert run.run_complete() is complete
    assert run.read_summary() == (summary or {})


@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("summary", '{"status": "complete",\n', ":2: not valid JSON"),  # not taken for "no summary yet"
        ("summary", "[1, 2]", ":1: expected a JSON object, got list"),
        ("config", "- a list\n", ": the top level must be a mapping of keys, got list"),
        ("config", "train: [unclosed\n", ":2:1: invalid YAML: while parsing a flow sequence"),
    ],
)
def test_a_broken_summary_or_config_is_named(tmp_path, name, text, problem):
    run = RunFolder(tmp_path)
    path = getattr(run, name)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RunFolderError, match="^" + re.escape(f"{path}{problem}")):
        run.run_complete() if name == "summary" else run.read_config()


def test_checkpoints_are_listed_by_step_without_staging_folders_or_strays(tmp_path):
    run = RunFolder(tmp_path)
    assert run.list_checkpoints() == [] and run.resumable_checkpoint() is None  # no checkpoints/ yet
    for step in (1_000_000, 400, 20):
        run.checkpoint(step).mkdir(parents=True)
    staging(run.checkpoint(600)).mkdir()  # cut short by a crash: never listed, never resumed
    (run.checkpoints / "step-42").mkdir()  # not six digits: not medtune's
    (run.checkpoints / "step-000800").write_text("a file, not a folder")
    (run.checkpoints / "notes").mkdir()
    assert run.list_checkpoints() == [
        (20, run.checkpoint(20)),
        (400, run.checkpoint(400)),
        (1_000_000, run.checkpoint(1_000_000)),
    ]


def test_resume_continues_from_the_newest_checkpoint_with_a_training_state(tmp_path):
    run = RunFolder(tmp_path)
    for step in (2, 4, 6):
        run.checkpoint(step).mkdir(parents=True)
    assert run.resumable_checkpoint() is None
    (run.checkpoint(2) / LEGACY_STATE_FILE).write_bytes(b"")  # a checkpoint of an earlier medtune version
    assert run.resumable_checkpoint() == (2, run.checkpoint(2))
    (run.checkpoint(4) / STATE_TENSORS_FILE).write_bytes(b"")  # tensors without the JSON file: not yet complete
    assert run.resumable_checkpoint() == (2, run.checkpoint(2))
    (run.checkpoint(4) / STATE_JSON_FILE).write_text("{}")
    assert run.resumable_checkpoint() == (4, run.checkpoint(4))
    staging_folder = staging(run.checkpoint(8))
    staging_folder.mkdir()
    (staging_folder / STATE_JSON_FILE).write_text("{}")
    assert run.resumable_checkpoint() == (4, run.checkpoint(4))


def test_metrics_are_read_strictly_with_file_and_line(tmp_path):
    run = RunFolder(tmp_path)
    with pytest.raises(RunFolderError, match=rf"^{run.metrics}: missing"):
        run.read_metrics()
    run.metrics.write_text('{"step": 0, "loss": 3.0}\n\n{"step": 2, "eval_loss": 2.5}\r\n', encoding="utf-8")
    assert run.read_metrics() == [{"step": 0, "loss": 3.0}, {"step": 2, "eval_loss": 2.5}]
    for line, problem in [
        ('{"step": 4, "loss": 1.0', "not valid JSON"),
        ("[4]", "expected a JSON object, got list"),
        ('{"loss": 1.0}', "`step` must be a non-negative integer, got None"),
        ('{"step": true}', "`step` must be a non-negative integer, got True"),
        ('{"step": -1}', "`step` must be a non-negative integer, got -1"),
        ('{"step": 4.0}', "`step` must be a non-negative integer, got 4.0"),
    ]:
        run.metrics.write_text('{"step": 0, "loss": 3.0}\n\n' + line + "\n", encoding="utf-8")
        with pytest.raises(RunFolderError, match=rf"^{run.metrics}:3: {problem}"):
            run.read_metrics()
    run.metrics.write_text("\n \n", encoding="utf-8")
    with pytest.raises(RunFolderError, match="no metric records"):
        run.read_metrics()


def test_the_resolved_config_is_read_as_a_mapping(tmp_path):
    run = RunFolder(tmp_path)
    with pytest.raises(RunFolderError, match=rf"^{run.config}: missing; a medtune run folder writes it"):
        run.read_config()
    run.config.write_text("run_name: v1\ntrain: {lr: 0.0001}\n", encoding="utf-8")
    assert run.read_config() == {"run_name": "v1", "train": {"lr": 0.0001}}


def test_write_atomic_replaces_the_file_whole(tmp_path):
    target = tmp_path / "summary.json"
    write_atomic(target, "old")
    write_atomic(target, "新".encode())
    assert target.read_text(encoding="utf-8") == "新"
    write_json(target, {"status": "完成", "step": 3})
    assert target.read_text(encoding="utf-8") == '{\n  "status": "完成",\n  "step": 3\n}\n'
    assert json.loads(target.read_text(encoding="utf-8")) == {"status": "完成", "step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_failed_rename_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "summary.json"
    target.mkdir()  # a folder in the way: the rename fails
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert (target / "keep").read_text() == "x"


def test_a_write_cut_short_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    write_atomic(target, '{"step": 1}\n')

    def disk_full(self: Path, data: bytes) -> int:
        with self.open("wb") as half:
            half.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, '{"step": 1}\n{"step": 2}\n')
    monkeypatch.undo()
    assert target.read_text() == '{"step": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_reading_runs_does_not_import_the_trainer():
    """report/ and infer/ read run folders through run_folder.py, not through train/ (which loads the recipe's
    stack)."""
    code = (
        "import sys, medtune.run_folder, medtune.report.build, medtune.infer.runs, medtune.infer.generate, "
        "medtune.infer.export, medtune.ablate\n"
        "print(sorted(name for name in sys.modules if name.startswith('medtune.train')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
