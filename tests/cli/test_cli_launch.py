"""`medtune train --processes N`: N processes on this machine, as torchrun starts them (two gloo processes here);
what every process would reject alike is one line before they start; a failing process's exit code is the command's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tests.cli.test_cli_train import short_args
from tests.conftest import CONFIGS
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from typer.testing import CliRunner

from medtune.cli import app, launch
from medtune.run_folder import RunFolder

runner = CliRunner()


def medtune_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medtune.cli", "train", str(CONFIGS / "v1.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def two_samples_a_step(tmp_path, data_file) -> list[str]:
    return [*short_args(tmp_path, data_file), "--set", "train.gradient_accumulation_steps=2"]


def test_two_processes_train_one_run_and_say_so_once(tmp_path, short_rows_file):
    done = medtune_train(*two_samples_a_step(tmp_path, short_rows_file), "--processes", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("run complete:") == 1
    env = json.loads((tmp_path / "v1" / "env.json").read_text())
    assert env["processes"] == 2 and env["batch"]["samples_per_process"] == 1
    assert json.loads((tmp_path / "v1" / "summary.json").read_text())["status"] == "complete"


def test_a_failure_in_the_processes_is_the_commands_exit_code_without_the_launchers_log(tmp_path, short_rows_file):
    bad = tmp_path / "bad.jsonl"
    rows = short_rows_file.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join([*rows[:8], "{not json"]) + "\n", encoding="utf-8")
    done = medtune_train(*two_samples_a_step(tmp_path, bad), "--processes", "2")
    assert done.returncode == 4, done.stderr[-3000:]  # a data file: every process names it
    assert "bad.jsonl:9" in done.stderr and "Traceback" not in done.stderr
    assert "torch.distributed.elastic" not in done.stderr and "exitcode" not in done.stderr


def test_what_every_process_would_reject_is_one_line_before_they_start(tmp_path, short_rows_file, monkeypatch):
    args = ["train", str(CONFIGS / "v1.yaml"), *two_samples_a_step(tmp_path, short_rows_file)]
    started = []
    monkeypatch.setattr(launch, "launch_local", lambda processes, command: started.append(command) or 0)
    assert runner.invoke(app, [*args, "--processes", "2"]).exit_code == 0
    (command,) = started
    assert command[:2] == ["train", str(CONFIGS / "v1.yaml")] and "--processes" not in command
    assert command.count("--set") == 9 and command.count("--overlay") == 1
    folder = RunFolder(tmp_path / "v1")  # a complete run, as far as the checks read it
    folder.path.mkdir()
    folder.metrics.write_text('{"step": 1, "loss": 1.0}\n')
    folder.summary.write_text('{"status": "complete", "step": 1}')
    for extra, code, words in (
        ([], 6, "holds a complete run"),
        (["--resume"], 6, "holds a complete run"),
        (["--overwrite", "--set", "train.gradient_accumulation_steps=1"], 3, "fewer than the 2 processes"),
        (["--set", "train.max_stepz=1"], 3, "max_stepz"),
    ):
        result = runner.invoke(app, [*args, *extra, "--processes", "2"])
        assert result.exit_code == code and result.output.count("error:") == 1 and words in result.output, extra
    monkeypatch.setenv("WORLD_SIZE", "2")
    under_torchrun = runner.invoke(app, [*args, "--overwrite", "--processes", "2"])
    assert under_torchrun.exit_code == 2 and "under torchrun leave it out" in under_torchrun.output
    assert len(started) == 1


def test_sigterm_to_the_command_stops_every_process_after_a_saved_step(tmp_path, short_rows_file):
    args = [
        *two_samples_a_step(tmp_path, short_rows_file),
        "--set",
        "train.max_steps=200",
        "--set",
        "train.save_steps=500",
    ]
    command = subprocess.Popen(
        [sys.executable, "-m", "medtune.cli", "train", str(CONFIGS / "v1.yaml"), *args, "--processes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    folder = RunFolder(tmp_path / "v1")
    deadline = time.monotonic() + 300
    while command.poll() is None and time.monotonic() < deadline:
        if folder.metrics.exists() and '"step": 2,' in folder.metrics.read_text():
            break
        time.sleep(0.2)
    command.send_signal(signal.SIGTERM)  # to the command only, as a scheduler's would reach it
    stdout, stderr = command.communicate(timeout=300)
    assert command.returncode == 130, stdout[-2000:] + stderr[-3000:]
    summary = folder.read_summary()
    assert summary["status"] == "interrupted" and 2 <= summary["step"] < 200
    assert [step for step, _ in folder.list_checkpoints()] == [summary["step"]]  # saved, not lost
    assert f"interrupted at step {summary['step']}: resume with --resume" in stderr
    said = stdout + stderr  # once, by the main process: each process said both lines, N times on N GPUs
    assert said.count("interrupted at step") == 1 and said.count("SIGTERM: stopping after this step") == 1, said
    assert "SIGTERM: stopping after this step" in stderr, "with medtune's other lines, so a 2> log keeps it"
    assert "Traceback" not in stderr and "SignalException" not in stderr and "death signal" not in stderr


@pytest.mark.parametrize(("exitcode", "code"), [(4, 4), (-9, 137)])
def test_the_first_failing_process_gives_the_exit_code(monkeypatch, capsys, tmp_path, exitcode, code):
    def fail(*command: str) -> None:
        failure = ProcessFailure(local_rank=1, pid=1, exitcode=exitcode, error_file=str(tmp_path / "none.json"))
        raise ChildFailedError("medtune.cli", {1: failure})

    monkeypatch.setattr("torch.distributed.launcher.api.elastic_launch", lambda config, entrypoint: fail)
    assert launch.launch_local(2, ["train", "x.yaml"]) == code
    killed = capsys.readouterr().err
    assert ("training process 1 of 2 was killed by SIGKILL" in killed) == (exitcode < 0)
