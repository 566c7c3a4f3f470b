"""`medtune train`, `data preview` and `ablate` as a user meets them: bad rows, bad configs, an existing run,
--skip-bad-rows."""

from __future__ import annotations

import json

from tests.conftest import CONFIGS
from typer.testing import CliRunner

from medtune.cli import app

runner = CliRunner()


def short_args(tmp_path, data_file):
    return [
        "--overlay",
        str(CONFIGS / "tiny.yaml"),
        "--set",
        f"output_dir={tmp_path}",
        "--set",
        f"data.train={data_file}",
        "--set",
        "data.max_length=640",
        "--set",
        "train.max_steps=1",
        "--set",
        "train.per_device_batch_size=1",
        "--set",
        "data.val_fraction=0.2",
        "--set",
        "train.eval_steps=1",
        "--set",
        "train.save_steps=1",
    ]


def test_bad_row_names_file_line_field_then_skip_reports_it(tmp_path, short_rows_file):
    rows = short_rows_file.read_text(encoding="utf-8").splitlines()
    broken = json.loads(rows[2])
    del broken["think"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join([rows[0], rows[1], json.dumps(broken, ensure_ascii=False), *rows[3:8], "{not json"]) + "\n",
        encoding="utf-8",
    )

    result = runner.invoke(app, ["train", str(CONFIGS / "v1.yaml"), *short_args(tmp_path, bad)])
    assert result.exit_code == 4
    assert result.output.startswith("error: ") and "bad.jsonl:3" in result.output and "think" in result.output

    result = runner.invoke(
        app, ["train", str(CONFIGS / "v1.yaml"), *short_args(tmp_path, bad), "--skip-bad-rows", "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "v1" / "data_stats.json").read_text())
    skipped = {row["source"]: row["field"] for row in stats["files"]["train"]["skipped"]}
    assert skipped.keys() == {"bad.jsonl:3", "bad.jsonl:9"} and skipped["bad.jsonl:3"] == "think"
    assert f"skipped 2 bad rows of {bad} (skip_bad_rows); each is listed in" in result.output
    assert stats["files"]["train"]["rows"] == 7 and stats["train"]["rows"] + stats["validation"]["rows"] == 7


def test_existing_run_needs_resume_or_overwrite(tmp_path, short_rows_file):
    """A complete run is neither resumed nor trained over without --overwrite (an interrupted one: test_recipe)."""
    args = ["train", str(CONFIGS / "v1.yaml"), *short_args(tmp_path, short_rows_file)]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 6 and "holds a complete run" in again.output and "--overwrite" in again.output
    complete = runner.invoke(app, [*args, "--resume"])
    assert complete.exit_code == 6 and "holds a complete run" in complete.output


def test_resume_refuses_settings_that_change_what_the_run_computes(tmp_path, short_rows_file, monkeypatch):
    """A run stopped at step 2 of 4 resumes with another logging interval, but not with another step count."""
    import medtune.train.recipe as recipe

    args = ["train", str(CONFIGS / "v1.yaml"), *short_args(tmp_path, short_rows_file), "--set", "train.max_steps=4"]
    original_step, calls = recipe.FineTuneRecipe.train_step, []

    def stop_at_step_3(self, items):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original_step(self, items)

    monkeypatch.setattr(recipe.FineTuneRecipe, "train_step", stop_at_step_3)
    assert runner.invoke(app, args).exit_code == 130
    monkeypatch.undo()
    changed = runner.invoke(app, [*args, "--resume", "--set", "train.max_steps=3", "--set", "train.lr=1e-3"])
    assert changed.exit_code == 3 and changed.output.count("error:") == 1, changed.output
    assert "-> 0.001; train.max_steps: 4 -> 3)" in changed.output and "config.resolved.yaml" in changed.output
    logged = runner.invoke(app, [*args, "--resume", "--set", "train.logging_steps=2"])
    assert logged.exit_code == 0, logged.output


def test_a_folder_holding_other_files_is_never_trained_over(tmp_path, short_rows_file):
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"a merged model, say")
    for extra in ([], ["--overwrite"], ["--resume"]):
        result = runner.invoke(app, ["train", str(CONFIGS / "v1.yaml"), *short_args(tmp_path, short_rows_file), *extra])
        assert result.exit_code == 6 and "holds files that are not a medtune run (model.safetensors)" in result.output
    assert [p.name for p in folder.iterdir()] == ["model.safetensors"]


def test_bad_config_is_reported_not_raised(tmp_path):
    result = runner.invoke(app, ["train", str(CONFIGS / "v1.yaml"), "--set", "train.lrr=1"])
    assert result.exit_code == 3 and "did you mean `lr`" in result.output


def test_data_preview_shows_masks_and_the_loss_mask(tmp_path, short_rows_file):
    result = runner.invoke(
        app,
        [
            "data",
            "preview",
            str(CONFIGS / "v3.yaml"),
            "--overlay",
            str(CONFIGS / "tiny.yaml"),
            "--set",
            f"data.train={short_rows_file}",
            "--set",
            "augment.probability=1.0",
            "--set",
            "augment.fields=[question,think,answer]",
            "--n",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("masked terms:") == 2 and "trained" in result.output and "<think>" in result.output


def test_ablate_takes_runs_per_gpu_of_at_least_one():
    result = runner.invoke(
        app, ["ablate", str(CONFIGS.parent / "experiments" / "quickstart.yaml"), "--runs-per-gpu", "0"]
    )
    assert result.exit_code == 2
    assert "--runs-per-gpu" in result.output


def test_check_skip_bad_rows_turns_the_bad_row_error_into_a_warning(tmp_path, short_rows_file):
    data = tmp_path / "rows.jsonl"
    data.write_text(short_rows_file.read_text(encoding="utf-8") + '{"question": "头痛"}\n', encoding="utf-8")
    args = ["check", str(CONFIGS / "v1.yaml"), *short_args(tmp_path, data)]
    wide = CliRunner(env={"COLUMNS": "200"})
    stopped = wide.invoke(app, args)
    assert stopped.exit_code == 1 and "rows.jsonl:17: field 'think': missing" in stopped.output
    skipped = wide.invoke(app, [*args, "--skip-bad-rows"])
    assert skipped.exit_code == 0, skipped.output
    assert "1 bad rows skipped" in skipped.output and "rows.jsonl:17" in skipped.output
