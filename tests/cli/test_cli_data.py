"""`medtune data stats`: tables a person reads, every count backed by the rows behind it; --json for scripts.
`medtune data preview`: a panel per sample, masks shown with the terms they hide."""

from __future__ import annotations

import json
import re

from tests.conftest import CONFIGS
from typer.testing import CliRunner

from medtune.cli import app
from medtune.cli.data import PREVIEW_LEGEND, highlight_masks
from medtune.config import AugmentConfig
from medtune.data.augment import Augmenter
from medtune.data.formats import Sample
from medtune.data.lexicon import Lexicon

runner = CliRunner(env={"COLUMNS": "200"})


def stats_args(data_file) -> list[str]:
    return [
        "data",
        "stats",
        str(CONFIGS / "v1.yaml"),
        "--overlay",
        str(CONFIGS / "tiny.yaml"),
        "--set",
        f"data.train={data_file}",
        "--set",
        "data.max_length=400",
        "--set",
        "data.val_fraction=0.25",
        "--set",
        "data.skip_bad_rows=true",
    ]


def test_stats_are_tables_with_rounded_numbers_and_the_rows_behind_each_count(tmp_path, short_rows_file):
    rows = short_rows_file.read_text(encoding="utf-8").splitlines()
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join([*rows, '{"question": "头痛"}']) + "\n", encoding="utf-8")

    stops = runner.invoke(app, [*stats_args(data)[:-2], "--json"])
    assert stops.exit_code == 4 and "rows.jsonl:17: field 'think': missing" in stops.output
    raw = runner.invoke(app, [*stats_args(data)[:-2], "--json", "--skip-bad-rows"])
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
    args = [
        "data",
        "preview",
        "--overlay",
        str(CONFIGS / "tiny.yaml"),
        "--set",
        f"data.train={short_rows_file}",
        "--n",
        "1",
    ]
    off = runner.invoke(app, [*args, str(CONFIGS / "v1.yaml"), "--masked-only"])
    assert (
        off.exit_code == 3
        and off.output.startswith("error: --masked-only")
        and len(off.output.strip().splitlines()) == 1
    )
    on = runner.invoke(app, [*args, str(CONFIGS / "v3.yaml"), "--masked-only", "--set", "augment.probability=1.0"])
    assert on.exit_code == 0, on.output
    assert on.output.count("masked terms:") == 1


def test_preview_shows_a_panel_per_sample_with_its_masks(short_rows_file):
    args = [
        "data",
        "preview",
        str(CONFIGS / "v3.yaml"),
        "--overlay",
        str(CONFIGS / "tiny.yaml"),
        "--set",
        f"data.train={short_rows_file}",
        "--set",
        "augment.probability=0.3",
        "--set",
        "augment.fields=[question,think,answer]",
    ]
    every = runner.invoke(app, [*args, "--n", "8"])
    masked = runner.invoke(app, [*args, "--n", "2", "--masked-only"])
    assert every.exit_code == 0 and masked.exit_code == 0, every.output + masked.output
    assert every.output.startswith(PREVIEW_LEGEND[:40]) and every.output.count("tokens ·") == 8
    assert every.output.count("masked terms:") < 8, "some samples of the plain preview are unmasked"
    assert masked.output.count("masked terms:") == masked.output.count("tokens ·") == 2
    all_of_them = runner.invoke(app, [*args, "--n", "100", "--masked-only"])
    assert re.search(r"^\d+ of the \d+ samples of epoch 0 have masked terms$", all_of_them.output, re.MULTILINE)


def test_preview_skips_bad_rows_as_stats_and_check_do(tmp_path, short_rows_file):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "头痛"}\n' + short_rows_file.read_text(encoding="utf-8"), encoding="utf-8")
    args = ["data", "preview", str(CONFIGS / "v1.yaml"), "--overlay", str(CONFIGS / "tiny.yaml")]
    args += ["--set", f"data.train={data}", "--n", "1"]

    stops = runner.invoke(app, args)
    assert stops.exit_code == 4 and "rows.jsonl:1: field 'think': missing" in stops.output
    skips = runner.invoke(app, [*args, "--skip-bad-rows"])
    assert skips.exit_code == 0, skips.output
    assert skips.output.count("tokens ·") == 1


def test_highlight_shows_each_mask_and_the_term_it_hides():
    sample = Sample(
        question="头痛三天", think="考虑头痛", answer="头痛合并发热时，阿司匹林可退热。", source="hand-made:1"
    )
    lexicon = Lexicon({"头痛": "symptom", "阿司匹林": "drug"}, "test")
    augmenter = Augmenter(AugmentConfig(enabled=True, probability=1.0, fields=["answer"]), lexicon, seed=7)
    masked, terms = augmenter.apply(sample, epoch=0, index=0)
    assert terms, "the sample must have a masked term"
    plain = highlight_masks(masked, terms).plain
    assert plain.startswith("answer: ") and all(f"{t.replacement}«{t.term}»" in plain for t in terms)
