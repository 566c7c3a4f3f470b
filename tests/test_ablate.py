"""The one-command ablation: versions x seeds, killed mid-run, restarted, ending in a report with CIs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.conftest import CONFIGS

from medtune.ablate import check_unchanged, load_experiment, parse_seeds, plan_runs
from medtune.config import ConfigError, dump_config


def write_experiment(tmp_path: Path, data_file: Path) -> Path:
    overlay = tmp_path / "short.yaml"
    overlay.write_text(
        f"data: {{train: {data_file}, max_length: 640, val_fraction: 0.25}}\n"
        "train: {per_device_batch_size: 1, gradient_accumulation_steps: 2, max_steps: 2, logging_steps: 1, "
        "eval_steps: 2, save_steps: 1}\n"
    )
    experiment = tmp_path / "ablation.yaml"
    experiment.write_text(
        f"name: test\nversions: {{v1: {CONFIGS / 'v1.yaml'}, v2: {CONFIGS / 'v2.yaml'}}}\nseeds: [1, 2]\n"
        f"overlays: [{CONFIGS / 'tiny.yaml'}, {overlay}]\nbaseline: v1\noutput_dir: runs\nreport_dir: report\n"
        "report: {steps: [1, 2]}\n"
    )
    return experiment


def ablate(experiment: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "medtune.cli", "ablate", str(experiment)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_killed_ablation_resumes_without_retraining(tmp_path, short_rows_file):
    experiment = write_experiment(tmp_path, short_rows_file)
    runs = tmp_path / "runs"
    proc = ablate(experiment, tmp_path)
    target = runs / "v1-seed2" / "checkpoints" / "step-000001" / "training_state.json"
    deadline = time.time() + 600
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert target.exists(), proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGKILL)  # a hard kill mid-run: no chance to save anything more
    proc.wait()

    done = runs / "v1-seed1"
    assert json.loads((done / "summary.json").read_text())["status"] == "complete"
    done_metrics = (done / "metrics.jsonl").read_bytes()
    done_mtime = (done / "metrics.jsonl").stat().st_mtime_ns
    cut_lines = (runs / "v1-seed2" / "metrics.jsonl").read_text().splitlines()
    kept_before_kill = [line for line in cut_lines if json.loads(line)["step"] <= 1]
    assert kept_before_kill == cut_lines, "killed after step 1 (its checkpoint), before step 2 was logged"

    output = ablate(experiment, tmp_path).communicate()[0]
    assert "v1-seed1" in output and "complete" in output

    assert (done / "metrics.jsonl").read_bytes() == done_metrics and (
        done / "metrics.jsonl"
    ).stat().st_mtime_ns == done_mtime
    resumed = (runs / "v1-seed2" / "metrics.jsonl").read_text().splitlines()
    assert resumed[: len(kept_before_kill)] == kept_before_kill, "step 1 was kept (timings included), not retrained"
    assert [json.loads(line)["step"] for line in resumed if "loss" in json.loads(line)] == [1, 2]
    for name in ("v1-seed1", "v1-seed2", "v2-seed1", "v2-seed2"):
        assert json.loads((runs / name / "summary.json").read_text())["status"] == "complete"

    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    report = (tmp_path / "report" / "report.md").read_text()
    assert "±" in report
    assert json.dumps(summary).count('"n": 2') >= 2


def test_plan_and_seeds(tmp_path, short_rows_file):
    experiment, root = load_experiment(write_experiment(tmp_path, short_rows_file))
    planned = plan_runs(experiment, root, seeds=parse_seeds("3"))
    assert [(p.version, p.seed) for p in planned] == [
        ("v1", 42),
        ("v1", 43),
        ("v1", 44),
        ("v2", 42),
        ("v2", 43),
        ("v2", 44),
    ]
    assert all(p.config.model.name_or_path == "tiny" and p.config.train.max_steps == 2 for p in planned)
    assert planned[3].config.train.schedule == "cosine" and planned[3].config.run_name == "v2-seed42"
    assert parse_seeds("1,5") == [1, 5]
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("x")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversions: {v1: v1.yaml}\nbaseline: v9\n")
    with pytest.raises(ConfigError, match="baseline 'v9'"):
        load_experiment(bad)
    bad.write_text("name: x\nversions: {v1: ../configs/v1.yaml}\nbaseline: v1\n")  # copied out of experiments/
    with pytest.raises(ConfigError, match=r"bad\.yaml: versions\.v1: .*configs/v1\.yaml not found \(paths in an"):
        load_experiment(bad)


def test_a_run_is_another_run_only_when_what_it_computes_changed(tmp_path, short_rows_file, monkeypatch):
    """A folder of this experiment whose stored config lacks keys added to medtune since (an upgrade) or differs only
    in how the run is logged is the same run; another learning rate is not, and the error lists the change."""
    monkeypatch.chdir(tmp_path)  # the experiment's output_dir is relative to the working folder
    experiment, root = load_experiment(write_experiment(tmp_path, short_rows_file))
    run = plan_runs(experiment, root)[0]
    stored = yaml.safe_load(dump_config(run.config))
    del stored["data"]["literal_tags"], stored["lora"]["tied_embeddings"]  # keys as if a later medtune added them
    stored["train"]["logging_steps"] = 5
    run.folder.path.mkdir(parents=True)
    run.folder.config.write_text(yaml.safe_dump(stored), encoding="utf-8")
    check_unchanged(run)
    stored["train"]["lr"] = 1e-3
    run.folder.config.write_text(yaml.safe_dump(stored), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"started with another config \(train\.lr: 0\.001 -> 0\.002\); delete"):
        check_unchanged(run)


def test_a_bad_experiment_says_what_each_key_accepts_as_a_bad_config_does(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("versions: [v1.yaml]\nseed: 3\nruns_per_gpu: two\nreport: {lang: fr}\n")
    with pytest.raises(ConfigError) as raised:
        load_experiment(bad)
    header, *lines = str(raised.value).splitlines()
    assert header == f"{bad}: invalid experiment:"
    assert sorted(line.strip() for line in lines) == [
        "name: missing (a required key)",
        "report.lang: expected en or zh (got 'fr')",
        "runs_per_gpu: expected an integer (got 'two')",
        "seed: unknown key (did you mean `seeds`?)",
        "versions: expected a mapping (got ['v1.yaml'])",
    ]
    bad.write_text("name: x\nversions: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid experiment:\n  versions: name at least one version$"):
        load_experiment(bad)


def test_a_bad_override_of_the_experiment_is_named_as_the_experiments_not_as_a_set_argument(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(f"name: x\nversions: {{v1: {CONFIGS / 'v1.yaml'}}}\noverrides: [train.max_step=2]\n")
    with pytest.raises(ConfigError) as raised:
        plan_runs(*load_experiment(experiment))
    assert str(raised.value).splitlines()[1] == (
        "  train.max_step: unknown key (did you mean `max_steps`?) (from the experiment's overrides: train.max_step=2)"
    )
    experiment.write_text(f"name: x\nversions: {{v1: {CONFIGS / 'v1.yaml'}}}\noverrides: [max_steps]\n")
    with pytest.raises(ConfigError) as raised:
        plan_runs(*load_experiment(experiment))
    assert str(raised.value) == "the experiment's overrides: 'max_steps': expected key=value, e.g. train.lr=1e-4"
    experiment.write_text(f"name: x\nversions: {{v1: {CONFIGS / 'v1.yaml'}}}\n")
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key .*\(from --set train\.lrr=1\)"):
        plan_runs(*load_experiment(experiment), extra_overrides=["train.lrr=1"])


def test_several_runs_share_one_gpu_in_parallel_processes(tmp_path, short_rows_file, monkeypatch):
    """runs_per_gpu: 2 on one (pretended) GPU trains two runs at the same time, each in its own process and log."""
    import medtune.ablate as ablate_module

    experiment = write_experiment(tmp_path, short_rows_file)
    text = experiment.read_text().replace("seeds: [1, 2]", "seeds: [1]").replace("steps: [1, 2]", "steps: [1]")
    experiment.write_text(text + "runs_per_gpu: 2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ablate_module, "visible_gpus", lambda: 1)
    spans: list[tuple[float, float]] = []
    real_run = subprocess.run

    def timed_run(command, *args, **kwargs):
        started = time.monotonic()
        done = real_run(command, *args, **kwargs)
        if "medtune.cli" in command:  # a run's process, not another tool the report or a check starts
            spans.append((started, time.monotonic()))
        return done

    monkeypatch.setattr(ablate_module.subprocess, "run", timed_run)
    ablate_module.run_experiment(experiment, extra_overrides=["train.max_steps=1"])

    (first_start, first_end), (second_start, second_end) = sorted(spans)
    assert second_start < first_end, "the second run waited for the first"
    for name in ("v1-seed1", "v2-seed1"):
        assert json.loads((tmp_path / "runs" / name / "summary.json").read_text())["status"] == "complete"
        assert f"run complete: runs/{name}" in (tmp_path / "runs" / name / "train.log").read_text()
    assert (tmp_path / "report" / "report.md").exists()
