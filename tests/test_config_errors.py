"""A bad value of a union or literal config field is one line saying what the field accepts, whether it came from
a `--set` argument or a YAML file; a value of the right type that fails a check keeps that check's message."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import CONFIGS
from typer.testing import CliRunner

from medtune.cli import app
from medtune.config import ConfigError, load_config

V1 = CONFIGS / "v1.yaml"


def problem_lines(overrides: list[str], path: Path = V1) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(path, overrides)
    header, *lines = str(raised.value).splitlines()
    assert header == f"{path}: invalid config:"
    return [line.strip() for line in lines]


@pytest.mark.parametrize(
    "override, line",
    [
        (
            "speed.offload_activations=maybe",
            "speed.offload_activations: expected true, false or auto (got 'maybe')",
        ),
        ("speed.offload_activations=[1]", "speed.offload_activations: expected true, false or auto (got [1])"),
        ("train.schedule=cosin", "train.schedule: expected linear, cosine or constant (got 'cosin')"),
        ("train.max_steps=many", "train.max_steps: expected an integer or null (got 'many')"),
        ("model.revision=[main]", "model.revision: expected a string or null (got ['main'])"),
        ("train.report_to=[swanlab, tb]", "train.report_to.1: expected swanlab, tensorboard or wandb (got 'tb')"),
        ("data.columns={question: 5}", "data.columns.question: expected a string or a list (got 5)"),
        ("data.columns={query: q}", "data.columns: keys must be system, question, think or answer, got 'query'"),
        ("quant.mode=nf8", "quant.mode: expected nf4, fp4 or none (got 'nf8')"),
    ],
)
def test_a_union_or_literal_field_is_one_line_saying_what_it_accepts(override, line):
    assert problem_lines([override]) == [f"{line} (from --set {override})"]


def test_a_check_of_a_union_member_keeps_its_message():
    """max_grad_norm is a number or null: -1 is a number, so the problem is the range, not the type."""
    assert problem_lines(["train.max_grad_norm=-1"]) == [
        "train.max_grad_norm: Input should be greater than 0 (got -1) (from --set train.max_grad_norm=-1)"
    ]


def test_a_size_read_as_a_yaml_number_is_named_once():
    assert problem_lines(["speed.memory_budget=12"])[0].endswith("got '12' (from --set speed.memory_budget=12)")


def test_the_yaml_file_names_each_field_on_its_own_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"base: {V1}\ntrain:\n  schedule: cosin\nspeed:\n  offload_activations: maybe\n", encoding="utf-8"
    )
    assert sorted(problem_lines([], config)) == [
        "speed.offload_activations: expected true, false or auto (got 'maybe')",
        "train.schedule: expected linear, cosine or constant (got 'cosin')",
    ]


def test_train_prints_it_as_the_config_error_it_is():
    result = CliRunner().invoke(app, ["train", str(V1), "--set", "speed.offload_activations=maybe"])
    assert result.exit_code == 3
    assert result.output.strip().splitlines() == [
        f"error: {V1}: invalid config:",
        "  speed.offload_activations: expected true, false or auto (got 'maybe') "
        "(from --set speed.offload_activations=maybe)",
    ]


@pytest.mark.parametrize(
    "override, line",
    [
        ("data.skip_bad_rows=yes please", "data.skip_bad_rows: expected true or false (got 'yes please')"),
        ("train=3", "train: expected a mapping (got 3)"),
        ("data.columns=[ask]", "data.columns: expected a mapping (got ['ask'])"),
        ("lora.target_modules=q_proj", "lora.target_modules: expected a list (got 'q_proj')"),
        ("data.train.file=x.jsonl", "data.train: expected a string (got {'file': 'x.jsonl'})"),
    ],
)
def test_a_value_of_another_type_says_what_the_key_accepts_and_where_it_came_from(override, line):
    """Not pydantic's `Input should be a valid dictionary or instance of TrainConfig`; a mapping given where a
    string belongs names its value and its `--set` argument like any other value."""
    assert problem_lines([override]) == [f"{line} (from --set {override})"]


@pytest.mark.parametrize("override", ["train..lr=1e-4", ".lr=1e-4", "train.=1e-4"])
def test_a_set_key_with_an_empty_part_is_refused(override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError) as raised:
        load_config(V1, [override])
    assert str(raised.value) == f"--set {override!r}: the key {key!r} has an empty part; e.g. train.lr=1e-4"
