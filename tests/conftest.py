"""Shared fixtures: the shipped tokenizer, short real rows, and tiny-model configs that run in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medtune.config import RunConfig, dump_config, load_config
from medtune.data.formats import resolve_data_path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def tokenizer():
    from medtune.config import ModelConfig
    from medtune.model.load import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path="tiny"))


@pytest.fixture(scope="session")
def short_rows_file(tmp_path_factory) -> Path:
    """The 16 shortest rows of the shipped medical data: real text, short enough for fast CPU steps."""
    rows = [
        json.loads(line)
        for line in resolve_data_path("medtune:delicate_medical_r1_val").read_text(encoding="utf-8").splitlines()
    ]
    rows.sort(key=lambda r: len(r["question"]) + len(r["think"]) + len(r["answer"]))
    path = tmp_path_factory.mktemp("data") / "short.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:16]), encoding="utf-8")
    return path


def tiny_config(version: str, tmp_path: Path, data_file: Path, *overrides: str) -> RunConfig:
    """A version's real config with the tiny overlay, made short for tests."""
    base = [
        f"output_dir={tmp_path}",
        f"data.train={data_file}",
        "data.max_length=640",
        "data.val_fraction=0.25",
        "train.per_device_batch_size=1",
        "train.gradient_accumulation_steps=2",
        "train.max_steps=4",
        "train.logging_steps=1",
        "train.eval_steps=2",
        "train.save_steps=2",
    ]
    return load_config(CONFIGS / f"{version}.yaml", [*base, *overrides], overlays=[CONFIGS / "tiny.yaml"])


def torchrun_train(cfg: RunConfig, config_file: Path, *args: str) -> subprocess.CompletedProcess:
    """`medtune train` on `cfg` in two torchrun processes on this machine; asserts it succeeded."""
    config_file.write_text(dump_config(cfg), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "medtune.cli",
            "train",
            str(config_file),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def leave_process_group() -> None:
    """Every process waits for the others before tearing gloo down: a process that destroys its group while a
    peer's last collective is still in flight can abort ("terminate called without an active exception")."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
