"""SIGTERM, as SLURM and Kubernetes stop a job, is the first Ctrl-C: the step finishes, a checkpoint is saved, the
command exits as an interruption (130) and `--resume` ends where an uninterrupted run ends. Under torchrun, which
forwards the signal to every worker at a different point of its step, all workers save the same step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import leave_process_group, tiny_config
from tests.train.test_recipe import ONE_VALIDATION_ROW, TIMING_KEYS, read_metrics

from medtune.config import dump_config
from medtune.run_folder import RunFolder
from medtune.train.distributed import DistContext
from medtune.train.interrupt import GracefulInterrupt

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
MAX_STEPS = 3
"""SIGTERM goes once step 1 is logged, so the run stops after step 1 or 2: always short of the end, which resume
must still reach."""
STEPS = (
    f"train.max_steps={MAX_STEPS}",
    "train.save_steps=100",
    "train.eval_steps=3",
    "train.logging_steps=1",
    ONE_VALIDATION_ROW,
)


def test_sigterm_asks_once_and_a_second_ctrl_c_stops_at_once():
    previous = signal.getsignal(signal.SIGTERM)
    with GracefulInterrupt() as interrupt:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # SLURM's, then torchrun's forwarded copy: still a graceful stop
        assert interrupt.requested and interrupt.stop_after_this_step(DistContext())
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == previous


def _agree(rank: int, init_file: str, answers: str) -> None:
    import torch.distributed

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    interrupt = GracefulInterrupt()
    interrupt.requested = rank == 1  # the signal reached one worker during this step, the other not yet
    stop = interrupt.stop_after_this_step(DistContext(rank=rank, world_size=2))
    Path(answers, str(rank)).write_text(str(stop))
    leave_process_group()


def test_a_signal_seen_by_one_worker_stops_every_worker_after_the_same_step(tmp_path):
    import torch.multiprocessing

    torch.multiprocessing.spawn(_agree, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    assert [(tmp_path / str(rank)).read_text() for rank in (0, 1)] == ["True", "True"]


def write_config(tmp_path: Path, name: str, data_file: Path, *overrides: str) -> Path:
    cfg = tiny_config("v1", tmp_path / name, data_file, *STEPS, *overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_config(cfg), encoding="utf-8")
    return path


def start(command: list[str], config: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *command, "train", str(config), *options],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def terminate_after_the_first_step(proc: subprocess.Popen, run_dir: Path) -> str:
    """SIGTERM once step 1 is in metrics.jsonl; the output of the stopped command."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists() and any(json.loads(line)["step"] >= 1 for line in metrics.read_text().splitlines()):
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=600)[0]


def assert_interrupted_and_saved(run_dir: Path) -> int:
    summary = json.loads((run_dir / "summary.json").read_text())
    step = summary["step"]
    assert summary["status"] == "interrupted" and summary["stopped_at_step"] == step and 1 <= step < MAX_STEPS, summary
    assert [saved for saved, _ in RunFolder(run_dir).list_checkpoints()] == [step]
    assert (RunFolder(run_dir).checkpoint(step) / "training_state.json").exists()
    return int(step)


def without_timings(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in TIMING_KEYS} for record in records]


def test_sigterm_saves_the_step_and_resume_ends_as_an_uninterrupted_run(tmp_path, short_rows_file):
    medtune = ["-m", "medtune.cli"]
    one_sample_a_step = "train.gradient_accumulation_steps=1"  # torchrun keeps 2: a sample for each process
    full_config, cut_config = (
        write_config(tmp_path, name, short_rows_file, one_sample_a_step) for name in ("full", "cut")
    )
    full = start(medtune, full_config)
    cut = start(medtune, cut_config)
    output = terminate_after_the_first_step(cut, tmp_path / "cut" / "v1")
    assert cut.returncode == 130, output[-3000:]
    step = assert_interrupted_and_saved(tmp_path / "cut" / "v1")
    assert "SIGTERM: stopping after this step and saving a checkpoint" in output
    assert output.strip().splitlines()[-1] == f"interrupted at step {step}: resume with --resume"
    assert full.communicate(timeout=600)[0] and full.returncode == 0

    resumed = start(medtune, cut_config, "--resume")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0 and f"resuming v1 from step {step}" in output, output[-3000:]
    cut_records, full_records = read_metrics(tmp_path / "cut" / "v1"), read_metrics(tmp_path / "full" / "v1")
    assert without_timings(cut_records) == without_timings(full_records)
    final_losses = [
        [record["loss"] for record in records if "loss" in record][-1:] for records in (cut_records, full_records)
    ]
    assert final_losses[0] == final_losses[1] and final_losses[0]


def test_under_torchrun_every_worker_saves_the_same_step(tmp_path, short_rows_file):
    """torchrun gets the SIGTERM and forwards it to both workers: they agree on one step, save it, and exit 130
    well within torchrun's grace period (a worker left in the next step would wait there until SIGKILL)."""
    config = write_config(tmp_path, "two", short_rows_file)
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "medtune.cli"]
    proc = start(torchrun, config)
    output = terminate_after_the_first_step(proc, tmp_path / "two" / "v1")
    step = assert_interrupted_and_saved(tmp_path / "two" / "v1")
    assert output.count(f"interrupted at step {step}: resume with --resume") == 1, output[-4000:]  # by rank 0
    assert "Unable to shutdown process" not in output, "a worker had to be killed"

    resumed = start(["-m", "medtune.cli"], config, "--resume")  # a run resumes on fewer processes
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert json.loads((tmp_path / "two" / "v1" / "summary.json").read_text())["status"] == "complete"
