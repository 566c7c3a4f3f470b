"""Importers on files written by the real libraries: HF Trainer (trainer_state.json, its TensorBoard and SwanLab
callbacks), SwanLab 0.10 offline, and a committed SwanLab 0.4 local log (tests/report/fixtures/make_swanlab04.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from medtune.report.build import build_report
from medtune.report.inputs import Note
from medtune.report.schedule import check_schedule
from medtune.report.sources import load_runs

FIXTURES = Path(__file__).parent / "fixtures"
HF_STEPS = 12


def swanlab_available() -> bool:
    return importlib.util.find_spec("swanlab") is not None


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    """A tiny random GPT-2 trained 12 steps on CPU by transformers' Trainer, logging every step."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    root = tmp_path_factory.mktemp("hf")
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 100, (64, 16), generator=generator)
    train = [{"input_ids": row, "labels": row} for row in tokens[:56]]
    validation = [{"input_ids": row, "labels": row} for row in tokens[56:]]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    report_to = ["tensorboard", "swanlab"] if swanlab_available() else ["tensorboard"]
    args = TrainingArguments(
        output_dir=str(root / "out"),
        run_name="hf-seed1",
        max_steps=HF_STEPS,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=6,
        save_steps=HF_STEPS,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=0.25,
        max_grad_norm=0.5,
        per_device_train_batch_size=4,
        report_to=report_to,
        use_cpu=True,
        seed=1,
    )
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(root / "tb")
    try:
        if swanlab_available():
            import swanlab

            # transformers 5's SwanLab callback needs an active run with swanlab 0.10 (its get_run() raises otherwise)
            swanlab.init(mode="offline", log_dir=str(root / "swanlog"), project="medtune-test", name="hf-seed1")
        Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation).train()
        if swanlab_available():
            swanlab.finish()  # the callback leaves the run open until the process exits
    finally:
        os.environ.pop("TENSORBOARD_LOGGING_DIR")
    state_file = root / "out" / f"checkpoint-{HF_STEPS}" / "trainer_state.json"
    history = json.loads(state_file.read_text())["log_history"]
    return root, args, history


def logged(history, key):
    return {entry["step"]: entry[key] for entry in history if key in entry}


def test_trainer_state_without_training_args_json(hf_run):
    root, _, history = hf_run
    (run,) = load_runs(root / "out")
    steps, losses = run.series("loss")
    assert dict(zip(steps.tolist(), losses.tolist())) == logged(history, "loss")
    assert run.series("eval_loss")[0].tolist() == [6, 12]
    assert run.max_steps() == HF_STEPS and run.name == "out"
    assert Note("training_args_pickle", {"file": str(root / "out" / f"checkpoint-{HF_STEPS}")}) in run.notes
    assert check_schedule(run, 0.01) == {"checked": False, "reason": "no_schedule", "schedule": None}


def test_trainer_state_with_training_args_json(hf_run, tmp_path):
    root, args, history = hf_run
    checkpoint = tmp_path / f"checkpoint-{HF_STEPS}"
    shutil.copytree(root / "out" / f"checkpoint-{HF_STEPS}", checkpoint)
    (checkpoint / "training_args.json").write_text(json.dumps(args.to_dict()))
    (run,) = load_runs(checkpoint / "trainer_state.json")
    assert run.name == "hf-seed1"
    assert (run.setting("train.schedule"), run.setting("train.lr"), run.setting("train.warmup_ratio")) == (
        "cosine",
        1e-3,
        0.25,
    )
    assert run.setting("train.max_grad_norm") == 0.5
    check = check_schedule(run, 0.01)
    # transformers 5 logs the LR the step used
    assert check["matches"] and check["convention"] == "used_by_step" and check["warmup_steps"] == 3


def test_tensorboard_events_from_the_trainer(hf_run):
    root, _, history = hf_run
    (run,) = load_runs(root / "tb")
    for key in ("loss", "grad_norm", "learning_rate", "eval_loss"):
        steps, values = run.series(key)
        expected = logged(history, key)
        assert steps.tolist() == sorted(expected)
        np.testing.assert_allclose(values, [expected[s] for s in sorted(expected)], rtol=1e-6)  # stored as float32
    assert run.name == "hf-seed1" and run.setting("train.schedule") == "cosine"
    assert check_schedule(run, 0.01)["matches"]


def test_tensorboard_summary_writer_without_trainer_args(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "plain"))
    for step in range(1, 6):
        writer.add_scalar("train/loss", 3.0 / step, step)
    writer.add_scalar("eval/loss", 1.1, 5)
    writer.close()
    (run,) = load_runs(tmp_path)
    np.testing.assert_allclose(run.series("loss")[1], [3.0 / s for s in range(1, 6)], rtol=1e-6)
    assert run.series("eval_loss")[0].tolist() == [5]
    assert Note("no_args_summary", {"file": str(tmp_path / "plain")}) in run.notes


def test_a_learning_rate_logged_as_lr_is_read_as_the_learning_rate(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "plain"))
    for step in range(1, 6):
        writer.add_scalar("train/loss", 3.0 / step, step)
        writer.add_scalar("train/lr", 1e-4 * step, step)
    writer.close()
    (run,) = load_runs(tmp_path)
    np.testing.assert_allclose(run.series("learning_rate")[1], [1e-4 * s for s in range(1, 6)], rtol=1e-6)


@pytest.mark.skipif(not swanlab_available(), reason="swanlab is not installed (pip install 'medtune[swanlab]')")
def test_swanlab_010_offline_run_from_the_trainer(hf_run):
    root, _, history = hf_run
    (run,) = load_runs(root / "swanlog")
    assert run.source.kind == "swanlab_run_file"
    assert run.name == "hf-seed1"
    for key in ("loss", "grad_norm", "learning_rate", "eval_loss"):
        steps, values = run.series(key)
        assert dict(zip(steps.tolist(), values.tolist())) == logged(history, key)
    assert run.setting("train.schedule") == "cosine" and run.max_steps() == HF_STEPS
    assert check_schedule(run, 0.01)["matches"]


@pytest.mark.skipif(not swanlab_available(), reason="swanlab is not installed (pip install 'medtune[swanlab]')")
def test_swanlab_010_unfinished_record_file_is_read_up_to_the_last_complete_record(hf_run, tmp_path):
    root, _, history = hf_run
    copy = tmp_path / "swanlog"
    shutil.copytree(root / "swanlog", copy)
    (record_file,) = copy.glob("run-*/run-*.swanlab")
    data = record_file.read_bytes()
    record_file.write_bytes(data[: len(data) * 2 // 3])  # as a crashed run leaves it
    (run,) = load_runs(copy)
    steps, values = run.series("loss")
    assert 0 < len(steps) < HF_STEPS
    assert dict(zip(steps.tolist(), values.tolist())) == {
        s: v for s, v in logged(history, "loss").items() if s in steps
    }
    assert [note.fields["file"] for note in run.notes if note.code == "incomplete_record"] == [str(record_file)]


@pytest.mark.skipif(not swanlab_available(), reason="swanlab is not installed (pip install 'medtune[swanlab]')")
def test_report_across_three_sources(hf_run, tmp_path):
    root, _, _ = hf_run
    summary = build_report(
        [("swanlab", root / "swanlog"), ("tensorboard", root / "tb"), ("trainer", root / "out")],
        out_dir=tmp_path / "out",
    )
    assert [version["name"] for version in summary["versions"]] == ["swanlab", "tensorboard", "trainer"]
    for name in ("tensorboard", "trainer"):
        assert (
            abs(summary["train_loss"]["rows"][-1]["vs_baseline"][name]["rel"]) < 1e-6
        )  # one training, three records of it


def load_fixture_script():
    spec = importlib.util.spec_from_file_location("make_swanlab04", FIXTURES / "make_swanlab04.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_swanlab_04_local_log():
    script = load_fixture_script()
    runs = load_runs(FIXTURES / "swanlab04" / "swanlog")
    assert sorted(run.name for run in runs) == sorted(script.RUNS)
    names = {
        "train/loss": "loss",
        "train/grad_norm": "grad_norm",
        "train/learning_rate": "learning_rate",
        "eval/loss": "eval_loss",
    }
    for run in runs:
        expected = script.expected_series(run.name)
        for tag, key in names.items():
            steps, values = run.series(key)
            assert dict(zip(steps.tolist(), values.tolist())) == expected[tag]
        assert run.setting("train.schedule") == script.RUNS[run.name]["lr_scheduler_type"]
        check = check_schedule(run, 0.01)
        assert check["matches"] and check["convention"] == "after_step"  # transformers 4.x convention


def test_swanlab_04_report_diffs_the_trainer_arguments(tmp_path):
    summary = build_report([FIXTURES / "swanlab04" / "swanlog"], out_dir=tmp_path / "out")
    diff = {row["key"]: row["values"] for row in summary["config_diff"]}
    assert diff["train.schedule"] == {"v1": ["linear"], "v2": ["cosine"]}
    assert diff["lora.dropout"] == {"v1": [0.05], "v2": [0.1]}  # mapped from peft_config's LoraConfig(...) text
    assert diff["lora.modules_to_save"] == {"v1": [[]], "v2": [["lm_head"]]}
    assert not [key for key in diff if key.startswith("hf.peft")]
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    raw = {
        run["name"]: run["imported_config"]["swanlab_config"]
        for version in written["versions"]
        for run in version["runs"]
    }
    assert raw["v2-seed1"]["peft_config"] == {
        "default": load_fixture_script().lora_repr("v2-seed1")
    }  # the text, as logged


def test_swanlab_04_database_with_pending_wal_is_read_and_left_alone(tmp_path):
    swanlog = tmp_path / "swanlog"
    shutil.copytree(FIXTURES / "swanlab04" / "swanlog", swanlog)
    writer = sqlite3.connect(swanlog / "runs.swanlab")
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("UPDATE experiment SET name = 'v1-seed7' WHERE name = 'v1-seed1'")
    writer.commit()  # the change lives only in runs.swanlab-wal while this connection stays open
    try:
        assert (swanlog / "runs.swanlab-wal").stat().st_size > 0
        before = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in swanlog.glob("runs.swanlab*")}
        names = sorted(run.name for run in load_runs(swanlog))
        after = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in swanlog.glob("runs.swanlab*")}
    finally:
        writer.close()
    assert names == ["v1-seed7", "v2-seed1"]
    assert before == after


def test_runs_of_a_swanlog_folder_come_in_name_order_whatever_their_folder_ids(tmp_path):
    swanlog = tmp_path / "swanlog"
    shutil.copytree(FIXTURES / "swanlab04" / "swanlog", swanlog)
    database = sqlite3.connect(swanlog / "runs.swanlab")
    database.execute("UPDATE experiment SET name = 'v10-seed1' WHERE name = 'v1-seed1'")  # the earlier folder
    database.commit()
    database.close()
    assert [run.name for run in load_runs(swanlog)] == ["v2-seed1", "v10-seed1"]
    summary = build_report([swanlog], out_dir=tmp_path / "out")
    assert summary["baseline"] == "v2"
