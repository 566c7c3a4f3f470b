"""Help that agrees with parsing, --version, --verbose, and where `ablate` looks for its default experiment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest
from tests.conftest import CONFIGS, REPO
from typer.testing import CliRunner

from medtune.cli import app
from medtune.config import ConfigError

runner = CliRunner(env={"COLUMNS": "200"})
COMMANDS = [
    ["train"],
    ["check"],
    ["ablate"],
    ["compare"],
    ["chat"],
    ["generate"],
    ["eval"],
    ["merge"],
    ["export"],
    ["serve"],
    ["data"],
    ["data", "stats"],
    ["data", "preview"],
    [],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "medtune")
def test_help_shows_value_names_not_python_types(command):
    shown = runner.invoke(app, [*command, "--help"]).output
    assert "Usage: " in shown
    assert not any(f"<{name}" in shown for name in ("bool", "list[", "str>", "Path")), shown


def test_a_flag_takes_no_value_as_its_help_says():
    shown = runner.invoke(app, ["train", "--help"]).output
    assert re.search(r"--resume\s+Continue", shown) and "--set" in shown and "KEY=VALUE" in shown
    result = runner.invoke(app, ["train", str(CONFIGS / "v1.yaml"), "--resume", "true"])
    assert result.exit_code == 2 and "true" in result.output


def test_version_names_medtune_and_its_libraries():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert (
        result.output.splitlines()[0] == f"medtune {version('medtune')}"
        and f"torch {version('torch')}" in result.output
    )


def test_python_dash_m_is_the_same_command():
    done = subprocess.run(
        [sys.executable, "-m", "medtune.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.startswith("medtune ")


def test_verbose_reaches_the_processes_a_command_starts(monkeypatch):
    import medtune.cli.main as cli_main

    quieted = []
    monkeypatch.setattr(cli_main, "quiet_libraries", lambda: quieted.append(True))
    monkeypatch.delenv("MEDTUNE_VERBOSE", raising=False)
    runner.invoke(app, ["--verbose", "check", "missing.yaml"])
    assert quieted == [] and os.environ.pop("MEDTUNE_VERBOSE") == "1"
    runner.invoke(app, ["check", "missing.yaml"])
    assert quieted == [True]


def test_ablate_finds_the_project_experiment_from_a_subfolder(tmp_path, monkeypatch):
    from medtune import ablate

    project = tmp_path / "project"
    (project / "experiments").mkdir(parents=True)
    (project / "experiments" / "quickstart.yaml").write_text("name: q\n")
    (project / "deep" / "er").mkdir(parents=True)
    assert ablate.find_default_experiment(project / "deep" / "er") == project / "experiments" / "quickstart.yaml"
    assert ablate.find_default_experiment(tmp_path) == REPO / "experiments" / "quickstart.yaml", "the checkout's own"

    monkeypatch.setattr(ablate, "DEFAULT_EXPERIMENT", ablate.DEFAULT_EXPERIMENT.with_name("missing.yaml"))
    with pytest.raises(ConfigError, match=rf"no experiments/missing.yaml in {tmp_path}, its parent folders or {REPO}"):
        ablate.find_default_experiment(tmp_path)
