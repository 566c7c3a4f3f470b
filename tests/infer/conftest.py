"""Tiny trained runs (real recipe, 4-bit NF4 + LoRA on CPU), trained once per test session.

v1: LoRA only, a checkpoint at step 1 (the end, step 2, is adapter/).
v2: embed_tokens and lm_head trained and kept tied.
v2-untied: the same, but trained as two untied copies (`lora.tied_embeddings=untie`), without validation rows (the
merge tests need none).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from tests.conftest import tiny_config
from typer.testing import CliRunner

from medtune.train.recipe import run

SHORT = (
    "train.max_steps=2",
    "train.per_device_batch_size=1",
    "train.gradient_accumulation_steps=2",
    "train.logging_steps=1",
)


def _train(tmp_path_factory, short_rows_file: Path, version: str, *overrides: str) -> Path:
    folder = tmp_path_factory.mktemp(f"run-{version}")
    return run(tiny_config(version, folder, short_rows_file, *SHORT, *overrides))


@pytest.fixture(scope="session")
def v1_run(tmp_path_factory, short_rows_file) -> Path:
    return _train(tmp_path_factory, short_rows_file, "v1", "train.save_steps=1", "train.eval_steps=2")


@pytest.fixture(scope="session")
def v2_run(tmp_path_factory, short_rows_file) -> Path:
    return _train(tmp_path_factory, short_rows_file, "v2", "train.save_steps=2", "train.eval_steps=2")


@pytest.fixture(scope="session")
def v2_untied_run(tmp_path_factory, short_rows_file) -> Path:
    return _train(
        tmp_path_factory,
        short_rows_file,
        "v2",
        "train.save_steps=2",
        "data.val_fraction=0",
        "lora.tied_embeddings=untie",
    )


@pytest.fixture(scope="session")
def cli_app() -> typer.Typer:
    """The `medtune` app, whose error rule turns bad input into one line and its exit code."""
    from medtune.cli import app

    return app


@pytest.fixture
def runner() -> CliRunner:
    """Wide enough that rich never wraps an error message inside its box."""
    return CliRunner(env={"COLUMNS": "1000", "TERMINAL_WIDTH": "1000"})
