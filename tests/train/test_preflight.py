"""`medtune check` says what a run will do and flags what would stop or waste it, without training."""

from __future__ import annotations

import json

from tests.conftest import CONFIGS, tiny_config
from typer.testing import CliRunner

from medtune.cli import app
from medtune.data.prepare import prepare_data
from medtune.model.load import load_tokenizer
from medtune.train.preflight import preflight
from medtune.train.recipe import run


def by_check(findings) -> dict[str, list[tuple[str, str]]]:
    grouped: dict[str, list[tuple[str, str]]] = {}
    for finding in findings:
        grouped.setdefault(finding.check, []).append((finding.level, finding.message))
    return grouped


def test_a_sound_config_passes_with_its_schedule_worked_out(tmp_path, short_rows_file):
    cfg = tiny_config("v2", tmp_path, short_rows_file)
    found = by_check(preflight(cfg))
    assert all(level == "ok" for levels in found.values() for level, _ in levels), found
    # 16 rows, 25% held out -> 12 training rows; 4 steps x 2 samples; cosine with 10% warmup -> 1 warmup step
    assert found["schedule"] == [("ok", "4 steps x 2 samples = 0.67 passes over 12 rows; cosine decay, 1 warmup steps")]
    assert found["run folder"] == [("ok", f"{cfg.run_dir()} (new)")]
    assert found["data"][0][1].startswith("12 training rows")
    mean = float(found["data"][0][1].split(", ")[1].split(" tokens")[0])  # rounded to a whole token
    ((level, message),) = found["batch"]
    step_tokens = float(message.split("about ")[1].split(" tokens")[0].replace(",", ""))
    assert level == "ok" and abs(step_tokens - 2 * mean) <= 1, "2 samples per step"
    assert message.endswith("about 1 forward pass(es) in packed rows of up to 16,384 tokens")
    rows_of_one = by_check(preflight(tiny_config("v2", tmp_path, short_rows_file, "speed.packed_row_tokens=640")))[
        "batch"
    ]
    assert rows_of_one[0][1].endswith("about 2 forward pass(es) in packed rows of up to 640 tokens")


def test_what_would_waste_a_run_is_flagged(tmp_path, short_rows_file):
    cfg = tiny_config(
        "v1",
        tmp_path,
        short_rows_file,
        "train.max_steps=80",
        "train.eval_steps=null",
        "train.save_steps=100",
        "data.max_length=450",
    )
    found = by_check(preflight(cfg))
    assert ("warn", "train.eval_steps is null: no eval loss during or after training") in found["eval"]
    assert found["checkpoints"][0][0] == "warn" and "a crash or a kill" in found["checkpoints"][0][1]
    assert any(
        level == "warn" and "passes over the training rows: expect overfitting" in message
        for level, message in found["schedule"]
    )
    data = [message for level, message in found["data"] if level == "warn"]
    stats = prepare_data(cfg, load_tokenizer(cfg.model)).stats["train"]
    cut_short = stats["truncated"] - stats["answer_cut"]
    assert cut_short > 0, "the test needs rows cut at max_length that keep part of their answer"
    assert any(
        m.startswith(f"{cut_short} of 12 training rows are cut at max_length 450: the end of their answer")
        for m in data
    ), data


def test_a_missing_model_is_reported_under_model_not_data(tmp_path, short_rows_file):
    cfg = tiny_config("v1", tmp_path, short_rows_file, f"model.name_or_path={tmp_path / 'no-such-model'}")
    found = by_check(preflight(cfg))
    ((level, message),) = found["model"]
    assert level == "error" and "no such folder" in message and "read as a local folder" in message
    assert "data" not in found


def test_errors_fail_the_cli_and_an_existing_run_is_reported(tmp_path, short_rows_file):
    too_short = [
        "--overlay",
        str(CONFIGS / "tiny.yaml"),
        "--set",
        f"output_dir={tmp_path}",
        "--set",
        f"data.train={short_rows_file}",
        "--set",
        "data.max_length=40",
    ]
    result = CliRunner().invoke(app, ["check", str(CONFIGS / "v1.yaml"), *too_short])
    assert result.exit_code == 1, result.output
    assert "no trainable rows: every answer is cut away by truncation to max_length=40" in " ".join(
        result.output.split()
    )

    cfg = tiny_config("v1", tmp_path, short_rows_file, "train.max_steps=1")
    run(cfg)
    assert json.loads((cfg.run_dir() / "summary.json").read_text())["status"] == "complete"
    found = by_check(preflight(cfg))
    assert found["run folder"][0][0] == "warn" and "holds a complete run" in found["run folder"][0][1]


def test_skip_bad_rows_turns_a_bad_row_from_an_error_into_a_warning(tmp_path, short_rows_file):
    data = tmp_path / "with_bad_row.jsonl"
    data.write_text(short_rows_file.read_text(encoding="utf-8") + '{"question": "q", "think": "t"}\n', encoding="utf-8")
    cfg = tiny_config("v1", tmp_path, data)
    ((level, message),) = by_check(preflight(cfg))["data"]
    assert level == "error" and "with_bad_row.jsonl:17" in message
    skipped = by_check(preflight(cfg, skip_bad_rows=True))["data"]
    assert (
        skipped[0][0] == "warn" and "1 bad rows skipped" in skipped[0][1] and "with_bad_row.jsonl:17" in skipped[0][1]
    )
    assert cfg.data.skip_bad_rows is False, "the caller's config is left as it was"


def test_repeated_rows_and_validation_rows_seen_in_training_are_flagged(tmp_path, short_rows_file):
    rows = short_rows_file.read_text(encoding="utf-8").splitlines()
    train, validation = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("\n".join([*rows, rows[0]]) + "\n", encoding="utf-8")
    validation.write_text("\n".join([rows[1], rows[2], rows[0]]) + "\n", encoding="utf-8")
    cfg = tiny_config("v1", tmp_path, train, f"data.validation={validation}")
    stats = prepare_data(cfg, load_tokenizer(cfg.model)).stats
    assert stats["train"]["repeated_rows"] == ["train.jsonl:17 = train.jsonl:1"]
    assert stats["validation"]["in_training_rows"] == [
        "val.jsonl:1 = train.jsonl:2",
        "val.jsonl:2 = train.jsonl:3",
        "val.jsonl:3 = train.jsonl:1",
    ]
    found = by_check(preflight(cfg))
    assert (
        "warn",
        "1 training rows repeat an earlier one, so they are trained twice as often (train.jsonl:17 = train.jsonl:1)",
    ) in found["data"]
    assert (
        "warn",
        "3 validation rows are also training rows: their eval loss measures recall, not how the model does on unseen "
        "questions (val.jsonl:1 = train.jsonl:2, val.jsonl:2 = train.jsonl:3, val.jsonl:3 = train.jsonl:1)",
    ) in found["eval"]
    clean = prepare_data(tiny_config("v1", tmp_path, short_rows_file), load_tokenizer(cfg.model)).stats
    assert clean["train"]["repeated"] == clean["validation"]["in_training"] == 0


def test_a_warmup_as_long_as_the_run_is_flagged(tmp_path, short_rows_file):
    """10 warmup steps in a 4-step run: the LR climbs for the whole run and never reaches train.lr (at most 3/10 of
    it, at the last step); `check` said only `10 warmup steps`, as if all were well."""
    found = by_check(preflight(tiny_config("v1", tmp_path, short_rows_file, "train.warmup_steps=10")))
    assert (
        "warn",
        "10 warmup steps in a run of 4 steps: the learning rate never reaches train.lr 0.002 (at most 30% of it)",
    ) in found["schedule"]
    found = by_check(preflight(tiny_config("v1", tmp_path, short_rows_file, "train.warmup_steps=3")))
    assert all(level == "ok" for level, _ in found["schedule"]), found["schedule"]
