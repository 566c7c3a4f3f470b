"""Grouping runs into versions, the schedule check, and clear errors for bad input (also through the CLI)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from medtune.cli import app
from medtune.report.build import build_report, group_versions
from medtune.report.inputs import ReportError, Run, Source, version_of
from medtune.report.schedule import ScheduleSpec, check_schedule, multiplier
from medtune.report.sources import load_runs

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    "name, version",
    [("v2-seed3", "v2"), ("v2_s11", "v2"), ("v2", "v2"), ("seed-study", "seed-study"), ("v1-seed", "v1-seed")],
)
def test_version_of_strips_seed_suffixes(name, version):
    assert version_of(name) == version


def test_grouping_by_run_name_and_by_name_option(make_run):
    a, b, c = make_run("v1", 1), make_run("v1", 2, run_name="v1_s2"), make_run("v2", 1, run_name="other")
    versions = group_versions([a.folder, b.folder, ("v2", c.folder)])
    assert [(version.name, [run.name for run in version.runs]) for version in versions] == [
        ("v1", ["v1-seed1", "v1_s2"]),
        ("v2", ["other"]),
    ]


@pytest.mark.parametrize(
    "schedule, warmup", [("linear", 0), ("linear", 7), ("cosine", 0), ("cosine", 7), ("constant", 7)]
)
def test_expected_lr_equals_transformers_get_scheduler(schedule, warmup):
    import torch
    from transformers import get_scheduler

    total = 50
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    name = "constant_with_warmup" if schedule == "constant" else schedule
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    reference = []
    for _ in range(total + 1):
        reference.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(
        multiplier(ScheduleSpec(schedule, 1.0, warmup, total), np.arange(total + 1)), reference, rtol=1e-12, atol=1e-15
    )


def test_logged_lr_that_does_not_follow_the_config_is_flagged(make_run, tmp_path):
    v1, v2 = make_run("v1", 1), make_run("v2", 1)
    config_path = v2.folder / "config.resolved.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["train"]["schedule"] = "linear"  # logged LR is cosine with warmup
    config_path.write_text(yaml.safe_dump(config))
    summary = build_report([v1.folder, v2.folder], out_dir=tmp_path / "out")
    check = summary["learning_rate"]["schedule_check"]["v2"]["v2-seed1"]
    assert not check["matches"] and check["max_deviation"] > 0.1
    bad = [insight for insight in summary["insights"] if insight["kind"] == "schedule_bad"]
    assert [insight["run"] for insight in bad] == ["v2-seed1"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert f"MISMATCH: {check['max_deviation'] * 100:.1f}% of peak at step {check['max_deviation_step']}" in markdown


def test_schedule_check_says_why_it_could_not_check():
    run = Run(
        "r",
        [{"step": 1, "loss": 1.0, "learning_rate": 1e-4}],
        {"train": {"schedule": "polynomial", "lr": 1e-4}},
        {},
        {},
        Source("medtune_run", "runs/r"),
    )
    assert check_schedule(run, 0.01)["reason"] == "unknown_schedule"
    run.config = {"train": {"schedule": "cosine", "lr": 1e-4}}
    assert check_schedule(run, 0.01)["reason"] == "no_total"


def test_malformed_metrics_line_names_file_and_line(make_run):
    run = make_run("v1", 1)
    metrics = run.folder / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[4] = '{"step": 50, "loss": 1.0'
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=rf"{metrics}:5: not valid JSON"):
        load_runs(run.folder)
    lines[4] = json.dumps({"step": "fifty", "loss": 1.0})
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=rf"{metrics}:5: `step` must be a non-negative integer, got 'fifty'"):
        load_runs(run.folder)
    for key, value in (("loss", "abc"), ("grad_norm", [0.5]), ("eval_loss", True)):
        lines[4] = json.dumps({"step": 50, key: value})
        metrics.write_text("\n".join(lines) + "\n")
        with pytest.raises(ReportError, match=re.escape(f"{metrics}:5: `{key}` must be a number, got {value!r}")):
            load_runs(run.folder)  # a compared value that is no number is an error, not silently left out
    lines[4] = json.dumps({"step": 50, "loss": None, "note": "text"})  # null: not logged; other keys are free
    metrics.write_text("\n".join(lines) + "\n")
    load_runs(run.folder)


def test_missing_or_broken_files_are_named(make_run, tmp_path):
    run = make_run("v1", 1)
    (run.folder / "summary.json").write_text("{broken")
    with pytest.raises(ReportError, match=rf"{run.folder / 'summary.json'}:1: not valid JSON"):
        load_runs(run.folder)
    (run.folder / "config.resolved.yaml").unlink()
    with pytest.raises(ReportError, match="config.resolved.yaml: missing"):
        load_runs(run.folder)
    with pytest.raises(ReportError, match="no such file or folder"):
        load_runs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="not a run"):
        load_runs(tmp_path / "empty")


def test_malformed_swanlab_log_line_names_file_and_line(tmp_path):
    swanlog = tmp_path / "swanlog"
    shutil.copytree(FIXTURES / "swanlab04" / "swanlog", swanlog)
    log_file = sorted(swanlog.glob("run-*/logs/0/*.log"))[0]
    lines = log_file.read_text().splitlines()
    lines[2] = '{"index": 6, "data": }'
    log_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=rf"{log_file}:3: expected"):
        load_runs(swanlog)


def test_bad_options_are_explained(make_run, tmp_path):
    folders = [make_run("v1", 1).folder, make_run("v2", 1).folder]
    with pytest.raises(ReportError, match="--baseline 'v9' is not one of the versions: v1, v2"):
        build_report(folders, out_dir=tmp_path / "out", baseline="v9")
    with pytest.raises(ReportError, match="phases must be two fractions"):
        build_report(folders, out_dir=tmp_path / "out", phases=(0.5, 0.1))
    with pytest.raises(ReportError, match="--lang 'fr'"):
        build_report(folders, out_dir=tmp_path / "out", lang="fr")
    with pytest.raises(ReportError, match="no runs given"):
        build_report([], out_dir=tmp_path / "out")


def test_cli_writes_the_report_and_says_where(make_run, tmp_path):
    a, b, c = make_run("v1", 1), make_run("v1", 2), make_run("v2", 1)
    out = tmp_path / "reports" / "cmp"
    result = CliRunner().invoke(
        app,
        [
            "compare",
            "--name",
            f"base={a.folder}",
            "--name",
            f"base={b.folder}",
            str(c.folder),
            "--baseline",
            "base",
            "--steps",
            "100,400",
            "--lang",
            "zh",
            "--phases",
            "0.2,0.6",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert str(out / "report.md") in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [version["name"] for version in summary["versions"]] == ["base", "v2"]
    assert [version["n_runs"] for version in summary["versions"]] == [2, 1]
    assert [row["step"] for row in summary["train_loss"]["rows"]] == [100, 400]
    assert summary["grad_norm"]["phase_bounds"] == [0.2, 0.6] and summary["lang"] == "zh"


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--name", "v1", "-o", str(tmp_path / "out")])
    assert result.exit_code == 7
    assert "error: --name 'v1': expected version=path" in result.output
    result = CliRunner().invoke(app, ["compare", str(tmp_path), "--steps", "100,abc", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "'100,abc': expected comma-separated numbers" in result.output


def test_cli_counts_a_run_given_twice_once(make_run, tmp_path):
    a, b = make_run("v1", 1), make_run("v2", 1)
    out = tmp_path / "twice"
    result = CliRunner().invoke(app, ["compare", str(a.folder), str(a.folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [version["n_runs"] for version in summary["versions"]] == [1]
    assert "Warning: run v1-seed1 was given twice for v1; it is counted once." in (out / "report.md").read_text()
    names = ["--name", f"v1={a.folder}", "--name", f"v1={a.folder}", "--name", f"v2={b.folder}"]
    result = CliRunner().invoke(app, ["compare", *names, "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [version["n_runs"] for version in summary["versions"]] == [1, 1]
    assert summary["random_weights"]["runs"] == ["v1-seed1", "v2-seed1"]
    assert not [warning for warning in summary["warnings"] if warning["kind"] == "setting"]
