"""Progress where there is no terminal (CI, nohup, a log file): one plain, uncut line per logging step; and the
summary a run ends with."""

from __future__ import annotations

from medtune.train.progress import TrainProgress, summary_lines


def record(step: int) -> dict:
    return {"step": step, "loss": 2.0 / step, "learning_rate": 2e-4, "tokens_per_s": 1234.5, "peak_memory_gib": 3.25}


def test_without_a_terminal_each_logging_step_is_one_plain_line(capsys):
    name = "a-run-name-long-enough-to-push-the-line-past-eighty-columns"
    with TrainProgress(name, total_steps=30, start_step=10) as progress:
        assert not progress.interactive, "pytest captures stderr: no terminal"
        progress.update(11)  # a step without a log record prints nothing
        progress.update(15, record(15))
        progress.note("step 15: eval_loss 1.2345")
        progress.update(20, record(20))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  elapsed")[0] for line in lines] == [
        "step 15/30  loss 0.1333  lr 2.00e-04  1,234 tok/s  mem 3.2 GiB",
        "step 15: eval_loss 1.2345",
        "step 20/30  loss 0.1000  lr 2.00e-04  1,234 tok/s  mem 3.2 GiB",
    ]
    assert all("\x1b" not in line for line in lines), "no terminal codes in a log file"
    assert lines[2].split("  ")[-1].startswith("ETA 0:"), "resumed at step 10: the ETA counts this session's pace"


def test_a_process_that_does_not_show_progress_prints_nothing(capsys):
    with TrainProgress("run", total_steps=4, start_step=0, show=False) as progress:
        progress.update(1, record(1))
        progress.note("batch: ...")
    assert capsys.readouterr().err == ""


def test_the_end_summary_says_losses_speed_time_and_where_the_adapter_is():
    summary = {
        "run_name": "v2",
        "step": 30,
        "random_weights": True,
        "tokens_per_s": 812.4,
        "train_seconds": 125.0,
        "wall_seconds": 3725.0,
        "last_train": {"step": 30, "loss": 9.87654},
        "last_eval": {"step": 30, "eval_loss": 9.9},
        "model": {"name_or_path": "models/qwen3-random", "size": "1.7B parameters", "architecture": "Qwen3ForCausalLM"},
    }
    lines = summary_lines(summary, "runs/v2/adapter")
    assert lines[0] == "finished v2: 30 steps"
    assert lines[1].startswith("  model    models/qwen3-random (1.7B parameters, Qwen3ForCausalLM); RANDOM WEIGHTS")
    assert lines[2] == "  losses   final loss 9.8765, eval_loss 9.9000 (step 30)"
    assert lines[3] == "  speed    812 tokens/s; 0:02:05 in training steps, 1:02:05 wall time in this session"
    assert lines[4] == "  adapter  runs/v2/adapter"
    without_eval = summary_lines({**summary, "random_weights": False, "last_eval": None}, "runs/v2/adapter")
    assert "RANDOM" not in without_eval[1] and "no eval loss" in without_eval[2] and "nan" not in without_eval[2]
