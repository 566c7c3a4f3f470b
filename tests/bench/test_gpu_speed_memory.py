"""bench/gpu_speed.py's memory table: `--memory-cap` reaches every stage's process,
`memory:STACK:SIZE:VERSION:capGIB` stages run one stack under a cap, and the record and report say what ran
(on CPU: the cap is recorded as not applied)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
from tests.bench.conftest import multigpu_record
from tests.conftest import REPO


def options(**values):
    defaults = dict(size="1.7b", nproc=1, work="w", out="o", warmup=1, steps=1, tiny=False, memory_cap=None)
    return argparse.Namespace(**{**defaults, **values})


def test_the_cap_reaches_every_stack_and_the_memory_stage_is_parsed(gpu_speed):
    capped = options(memory_cap=24.0)
    for stage in ("medtune", "reference", "unsloth"):
        command = gpu_speed.stage_command(stage, ["v1"], capped)
        assert command[command.index("--memory-cap") + 1] == "24.0", stage
    assert "--memory-cap" not in gpu_speed.stage_command("prepare", ["8b"], capped)
    command = gpu_speed.stage_command("memory", ["unsloth", "8b", "v2", "cap16"], options())
    assert command[2:4] == ["memory", "v2"] and command[command.index("--stack") + 1] == "unsloth"
    assert command[command.index("--memory-cap") + 1] == "16" and command[command.index("--size") + 1] == "8b"
    with pytest.raises(SystemExit, match="expected memory:STACK:SIZE:VERSION:capGIB"):
        gpu_speed.stage_command("memory", ["medtune", "8b", "v2"], options())


def test_the_report_shows_each_stack_under_each_cap(gpu_speed):
    records = [
        {
            "kind": "memory",
            "stack": "unsloth",
            "size": "8b",
            "version": "v1",
            "cap_gib": 16.0,
            "cap_applied": True,
            "status": "ok",
            "peak_gib": 8.6,
            "peak_reserved_gib": 9.0,
            "tokens_per_s": 5000.0,
        },
        {
            "kind": "memory",
            "stack": "medtune",
            "size": "8b",
            "version": "v1",
            "cap_gib": 16.0,
            "cap_applied": True,
            "status": "oom",
            "peak_gib": 15.2,
            "tokens_per_s": None,
            "predicted_peak_gib": 13.6,
            "plan": {"levers": [{"lever": "speed.checkpoint_fraction", "value": "1.00", "reason": "..."}]},
        },
    ]
    table = gpu_speed.report(records)
    assert "| 8b | v1 | 16 | (b) medtune | oom | 15.2 | - | 13.6 | speed.checkpoint_fraction 1.00 |" in table
    assert "| 8b | v1 | 16 | (c) unsloth | ok | 8.6 / 9.0 | 5,000 | - | - |" in table
    assert table.index("(b) medtune") < table.index("(c) unsloth")


@pytest.mark.slow
def test_a_memory_stage_runs_on_cpu_with_tiny(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu_speed.py"),
            "all",
            "--tiny",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--warmup",
            "1",
            "--steps",
            "1",
            "--stages",
            "prepare",
            "memory:medtune:1.7b:v1:cap8",
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["memory"], records
    (record,) = records
    assert {key: record[key] for key in ("stack", "size", "version", "cap_gib", "status", "cap_applied")} == {
        "stack": "medtune",
        "size": "1.7b",
        "version": "v1",
        "cap_gib": 8.0,
        "status": "ok",
        "cap_applied": False,
    }
    assert record["note"] == "cap ignored: no GPU" and record["tokens_per_s"] > 0 and record["peak_gib"] is None
    assert (
        record["plan"]["budget"] == "training on the CPU: no GPU memory to plan"
        and record["predicted_peak_gib"] is None
    )


def test_multigpu_scaling_is_against_the_fastest_one_gpu_run(gpu_speed):
    """The first process on a fresh machine stalls a step: DDP's speed-up is against the steady one-GPU run."""

    table = "\n".join(
        gpu_speed.multigpu_report(
            [multigpu_record("none", 6638.0), multigpu_record("none", 8856.0), multigpu_record("ddp", 15396.0)]
        )
    )
    ddp_row = next(line for line in table.splitlines() if "| ddp |" in line)
    assert "| 1.74x |" in ddp_row and "| 87% |" in ddp_row
