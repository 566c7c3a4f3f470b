"""A bad command line (unknown option or command, missing argument, bad value) is one line on stderr naming the
command and the option, with exit code 2, for every command; --help is untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import CONFIGS, REPO
from typer.testing import CliRunner

from medtune.cli import app

runner = CliRunner()
V1 = str(CONFIGS / "v1.yaml")


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["check", V1, "--gpu-memory", "24XB"],
            "medtune check: --gpu-memory: expected a size such as 20GiB, 8GB or 512MiB (units: KiB, MiB, GiB, TiB, "
            "KB, MB, GB, TB), got '24XB'",
        ),
        (["check"], "medtune check: missing argument 'CONFIG'; see 'medtune check --help'"),
        (["check", V1, "--bogus"], "medtune check: no such option: --bogus; see 'medtune check --help'"),
        (["check", V1, "--set"], "medtune check: option '--set' requires an argument; see 'medtune check --help'"),
        (["check", "missing.yaml"], "medtune check: CONFIG: file 'missing.yaml' does not exist"),
        (
            ["check", V1, "surplus"],
            "medtune check: got unexpected extra argument(s) (surplus); see 'medtune check --help'",
        ),
        (
            ["compare", "runs", "--out", "report", "--lang", "fr"],
            "medtune compare: --lang: 'fr' is not one of 'en', 'zh'",
        ),
        (
            ["eval", "runs/x", "--checkpoint", "abc"],
            "medtune eval: --checkpoint 'abc': input should be a valid integer, unable to parse string as an integer",
        ),
        (
            ["serve", "runs/x", "--port", "70000"],
            "medtune serve: --port '70000': input should be less than or equal to 65535",
        ),
        (["bogus"], "medtune: no such command 'bogus'; see 'medtune --help'"),
        (["--bogus", "check"], "medtune: no such option: --bogus (Possible options: --verbose); see 'medtune --help'"),
        (["data", "bogus"], "medtune data: no such command 'bogus'; see 'medtune data --help'"),
        (["data", "stats"], "medtune data stats: missing argument 'CONFIG'; see 'medtune data stats --help'"),
    ],
    ids=lambda value: " ".join(Path(arg).name for arg in value) if isinstance(value, list) else "",
)
def test_a_bad_command_line_is_one_line_naming_the_option(args, line):
    result = runner.invoke(app, args, prog_name="medtune")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {line}"]


def test_a_usage_error_goes_to_stderr_alone(tmp_path):
    """The real command: only stderr carries the line (and no box, no usage block), stdout stays empty."""
    result = subprocess.run(
        [sys.executable, "-m", "medtune.cli", "check", V1, "--gpu-memory", "24XB"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: medtune check: --gpu-memory: expected a size such as 20GiB")


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"], ["data", "stats", "--help"], []])
def test_help_is_still_help(args):
    result = runner.invoke(app, args, prog_name="medtune")
    assert "Usage: medtune" in result.output and "error:" not in result.output
    assert result.exit_code == (2 if not args else 0)  # no arguments: the help, with click's exit code
