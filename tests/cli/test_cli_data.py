"""`medtune data stats`: tables a person reads, every count backed by the rows behind it; --json for scripts."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from medtune.cli import app
from tests.conftest import CONFIGS

runner = CliRunner(env={"COLUMNS": "200"})


def stats_args(data_file) -> list[str]:
    return ["data", "stats", str(CONFIGS / "v1.yaml"), "--overlay", str(CONFIGS / "tiny.yaml"), "--set", f"data.train={data_file}",
            "--set", "data.max_length=400", "--set", "data.val_fraction=0.25", "--set", "data.skip_bad_rows=true"]


def test_stats_are_tables_with_rounded_numbers_and_the_rows_behind_each_count(tmp_path, short_rows_file):
    rows = short_rows_file.read_text(encoding="utf-8").splitlines()
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join([*rows, '{"question": "头痛"}']) + "\n", encoding="utf-8")

    raw = runner.invoke(app, [*stats_args(data), "--json"])
    assert raw.exit_code == 0, raw.output
    stats = json.loads(raw.output)
    train = stats["train"]
    assert train["truncated"] > 0 and stats["files"]["train"]["skipped_rows"] == 1, "the test needs both to be shown"

    shown = runner.invoke(app, stats_args(data))
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "files read" in out and "splits as encoded (max_length 400)" in out
    assert "rows.jsonl:17 field 'think': missing" in out, "a skipped row is listed with its reason"
    assert ", ".join(train["truncated_rows"]) in " ".join(out.split()), "truncated rows are listed by source"
    p90 = next(line for line in out.splitlines() if "token length p90" in line)
    assert f"{train['token_length']['p90']:,.1f}".removesuffix(".0") in p90
    assert not any(len(number) > 8 for number in re.findall(r"\d+\.\d+", out)), "no float noise"


def test_preview_masked_only_needs_the_augmentation(short_rows_file):
    args = ["data", "preview", "--overlay", str(CONFIGS / "tiny.yaml"), "--set", f"data.train={short_rows_file}", "--n", "1"]
    off = runner.invoke(app, [*args, str(CONFIGS / "v1.yaml"), "--masked-only"])
    assert off.exit_code == 3 and off.output.startswith("error: masked_only") and len(off.output.strip().splitlines()) == 1
    on = runner.invoke(app, [*args, str(CONFIGS / "v3.yaml"), "--masked-only", "--set", "augment.probability=1.0"])
    assert on.exit_code == 0, on.output
    assert on.output.count("masked terms:") == 1
