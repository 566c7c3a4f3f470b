"""The one error rule: medtune's own errors are one line `error: ...` with their documented exit code;
anything else keeps its traceback."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import CONFIGS, REPO
from typer.testing import CliRunner

import medtune
from medtune.cli import app
from medtune.cli.errors import EXIT_CODES, exit_code_for

runner = CliRunner()
TINY = ["--overlay", str(CONFIGS / "tiny.yaml")]


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def error_classes(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name.endswith("Error")}


NEVER_REACH_THE_COMMAND_LINE = {"ApiError"}  # serve answers it as an HTTP error response


def test_every_error_class_of_medtune_has_an_exit_code():
    """A new `class ...Error` in src/medtune must be given a code, or it would surface as a traceback; every name
    in the table must exist (read from the source, so the test imports no torch)."""
    package = Path(medtune.__file__).parent
    defined = {
        name
        for source in package.rglob("*.py")
        for name in error_classes(source)
        if not name.startswith("_") and name not in NEVER_REACH_THE_COMMAND_LINE
    }
    mapped = set()
    for exit_code in EXIT_CODES:
        for entry in exit_code.errors:
            module, name = entry.split(":")
            source = package.parent.joinpath(*module.split(".")).with_suffix(".py")
            assert name in error_classes(source), f"{entry}: no such class"
            mapped.add(name)
    assert defined <= mapped, f"errors without an exit code: {sorted(defined - mapped)}"
    codes = [exit_code.code for exit_code in EXIT_CODES]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("readme", ["README.md", "README_zh.md"])
def test_the_exit_codes_are_documented_in_help_and_both_readmes(readme):
    documented = {
        int(code) for code in re.findall(r"^\| `(\d+)` \|", (REPO / readme).read_text(encoding="utf-8"), re.M)
    }
    assert documented == {exit_code.code for exit_code in EXIT_CODES}
    shown = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["--help"]).output
    for exit_code in EXIT_CODES:
        assert f"{exit_code.code:>3}  {exit_code.meaning}" in shown


@pytest.mark.parametrize(
    "command, content, name, expected",
    [
        (["data", "stats"], "{not json\n", "bad.jsonl", r"bad\.jsonl:1: .*invalid JSON"),
        (["data", "stats"], "", "empty.jsonl", r"empty\.jsonl: no rows"),
        (["data", "stats"], "question,answer\n", "rows.xyz", r"rows\.xyz: unsupported file type '\.xyz'"),
        (["data", "preview"], "{not json\n", "bad.jsonl", r"bad\.jsonl:1: .*invalid JSON"),
    ],
)
def test_data_commands_name_the_bad_file_in_one_line(tmp_path, command, content, name, expected):
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    result = runner.invoke(app, [*command, str(CONFIGS / "v1.yaml"), *TINY, "--set", f"data.train={data}"])
    assert result.exit_code == 4
    assert re.search(expected, one_error_line(result))


@pytest.mark.parametrize("command", [["data", "preview"], ["train"]])
def test_a_binary_lexicon_is_one_line(tmp_path, short_rows_file, command):
    lexicon = tmp_path / "terms.txt"
    lexicon.write_bytes(bytes(range(128, 256)) * 4)
    result = runner.invoke(
        app,
        [
            *command,
            str(CONFIGS / "v3.yaml"),
            *TINY,
            "--set",
            f"data.train={short_rows_file}",
            "--set",
            f"augment.lexicon={lexicon}",
            "--set",
            f"output_dir={tmp_path / 'runs'}",
        ],
    )
    assert result.exit_code == 4
    assert "terms.txt:1: not valid UTF-8" in one_error_line(result)


def test_a_bad_config_value_is_one_line_naming_the_key(tmp_path):
    result = runner.invoke(app, ["check", str(CONFIGS / "v1.yaml"), "--set", "train.lr=fast"])
    assert result.exit_code == 3 and "train.lr" in result.output and result.output.startswith("error: ")


def write_experiment(tmp_path: Path, data_file: Path) -> Path:
    experiment = tmp_path / "ablation.yaml"
    experiment.write_text(
        f"name: t\nversions: {{v1: {CONFIGS / 'v1.yaml'}, v2: {CONFIGS / 'v2.yaml'}}}\nseeds: [1]\n"
        f"overlays: [{CONFIGS / 'tiny.yaml'}]\noverrides: [data.train={data_file}, train.max_steps=1]\n"
        f"output_dir: {tmp_path / 'runs'}\nreport_dir: {tmp_path / 'report'}\n"
    )
    return experiment


def test_ablate_with_nothing_to_report_is_one_line(tmp_path, short_rows_file, monkeypatch):
    """The runs "train" without writing anything (stubbed), so the real report finds no metrics."""
    import medtune.ablate as ablate_module
    import medtune.train.recipe as recipe

    monkeypatch.setattr(recipe, "run", lambda cfg, resume=False: cfg.run_dir())
    monkeypatch.setattr(ablate_module, "visible_gpus", lambda: 0)
    result = runner.invoke(app, ["ablate", str(write_experiment(tmp_path, short_rows_file))])
    assert result.exit_code == 7, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ")


def test_ablate_names_each_failed_run_and_its_log(tmp_path, short_rows_file, monkeypatch):
    """Runs in their own processes (one pretended GPU, two runs on it) whose processes fail: exit 9. The processes
    are stubbed (test_ablate.py starts real ones); their exit code is what ablate reports."""
    import medtune.ablate as ablate_module

    monkeypatch.setattr(ablate_module, "visible_gpus", lambda: 1)
    monkeypatch.setattr(
        ablate_module.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(command, 4)
    )
    result = runner.invoke(app, ["ablate", str(write_experiment(tmp_path, short_rows_file)), "--runs-per-gpu", "2"])
    assert result.exit_code == 9, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: 2 of 2 runs failed") and "v1-seed1 failed (exit 4); see " in line
    assert str(tmp_path / "runs" / "v2-seed1" / "train.log") in line


def test_an_unexpected_error_keeps_its_traceback(monkeypatch):
    import medtune.config

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(medtune.config, "load_config", broken)
    result = runner.invoke(app, ["check", str(CONFIGS / "v1.yaml")])
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)
    assert exit_code_for(ZeroDivisionError()) is None


def test_ctrl_c_prints_what_training_saved_and_exits_130(monkeypatch):
    import medtune.train.recipe as recipe

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("interrupted at step 22: resume with --resume")

    monkeypatch.setattr(recipe, "run", interrupted)
    result = runner.invoke(app, ["train", str(CONFIGS / "v1.yaml")])
    assert result.exit_code == 130 and result.output.strip() == "interrupted at step 22: resume with --resume"


@pytest.mark.parametrize(
    "command", [["--version"], ["data", "preview", str(CONFIGS / "v1.yaml"), *TINY]], ids=["version", "data-preview"]
)
def test_a_closed_stdout_ends_the_command_quietly_with_0(command):
    """`medtune data preview ... | head`: the reader went away with what it wanted; no error, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "medtune.cli", *command], stdout=write_end, stderr=subprocess.PIPE, timeout=300
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0 and done.stderr == b"", done.stderr.decode()
