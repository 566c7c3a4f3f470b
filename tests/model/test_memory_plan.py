"""The memory planner: defaults stay when they fit, levers move cheapest first and only as far as needed, the user's
settings win, and a run that cannot fit stops before training with the numbers."""

from __future__ import annotations

import json

import pytest
import torch
from tests.conftest import CONFIGS

from medtune.config import ConfigError, load_config, parse_memory_size
from medtune.data.prepare import prepare_data
from medtune.model.memory import GIB, MemorySettings, ModelShape
from medtune.model.memory_plan import MemoryBudgetError, plan_for_run, plan_memory, run_rows, size_budget, with_levers
from medtune.model.qwen3_sizes import qwen3_config


@pytest.fixture(scope="module")
def lengths(tokenizer) -> list[int]:
    cfg = load_config(CONFIGS / "v1.yaml", ["model.name_or_path=tiny"])
    return [len(encoded) for encoded in prepare_data(cfg, tokenizer).train.encoded]


def plan(version: str, lengths: list[int], budget_gib: float, *overrides: str, size: str = "1.7b"):
    cfg = load_config(CONFIGS / f"{version}.yaml", ["model.name_or_path=tiny", *overrides])
    shape = ModelShape.from_config(qwen3_config(size))
    settings = MemorySettings.from_run(cfg, liger=True)
    return (
        cfg,
        *plan_memory(cfg, shape, settings, run_rows(cfg, lengths, 20, 1), budget_gib * GIB, f"{budget_gib} GiB"),
    )


def test_defaults_stay_on_a_big_gpu(lengths):
    cfg, found, levers = plan("v2", lengths, 130)
    assert found.fits and found.levers == [] and levers.checkpoint_fraction == 0.75 and levers.row_tokens == 16384
    assert found.lines()[1] == "  levers as configured"
    assert 13 < found.predicted_peak_gib < 17  # 14.7 GiB measured (bench call 6)


def test_levers_move_cheapest_first_and_only_as_far_as_needed(lengths):
    _, at_12, levers = plan("v1", lengths, 12)
    assert [change.lever for change in at_12.levers] == ["allocator", "speed.checkpoint_fraction"]
    assert 0.75 < levers.checkpoint_fraction < 1.0, "only as many more recomputed layers as needed"
    assert at_12.predicted_reserved_gib <= 12
    _, at_5, frugal = plan("v1", lengths, 5)
    assert [change.lever for change in at_5.levers][:2] == ["allocator", "speed.checkpoint_fraction"]
    assert frugal.checkpoint_fraction == 1.0 and at_5.fits
    _, tight, tightest = plan("v1", lengths, 3.5)
    levers_moved = [change.lever for change in tight.levers]
    assert levers_moved[-1] == "speed.packed_row_tokens" and "speed.offload_activations" in levers_moved
    assert tightest.row_tokens >= 2048, "never below data.max_length"
    assert all(line.startswith("  ") for line in tight.lines()[1:])


def test_the_users_settings_win_with_a_warning(lengths):
    cfg, found, levers = plan(
        "v1",
        lengths,
        8,
        "speed.checkpoint_fraction=0.5",
        "speed.packed_row_tokens=16384",
        "speed.offload_activations=false",
    )
    assert levers.checkpoint_fraction == 0.5 and levers.row_tokens == 16384 and levers.offload_activations is False
    held = "(speed.checkpoint_fraction, speed.offload_activations, speed.packed_row_tokens)"
    assert not found.fits and f"with the settings you wrote {held}" in found.notes[0]
    assert "does NOT fit" in found.lines()[0]


def test_a_run_that_cannot_fit_stops_with_the_numbers(lengths):
    with pytest.raises(MemoryBudgetError) as raised:
        plan("v2", lengths, 6, size="8b")
    message = str(raised.value)
    assert isinstance(raised.value, ConfigError), "exit code 3, as a config the user must change"
    assert "training cannot fit 6 GiB" in message and "with the levers that lower it most" in message
    assert (
        "Biggest terms: base weights (4-bit NF4 with absmax) 3.3 GiB, lm_head gradient accumulator (fp32) 2.8 GiB"
        in message
    )


def test_the_plan_goes_into_a_copy_of_the_config(lengths):
    cfg, found, levers = plan("v1", lengths, 4)
    effective = with_levers(cfg, levers)
    assert cfg.speed.checkpoint_fraction == 0.75 and effective.speed.checkpoint_fraction == levers.checkpoint_fraction
    assert effective.speed.offload_activations is levers.offload_activations and cfg.speed.offload_activations == "auto"


def test_no_plan_on_cpu(lengths):
    cfg = load_config(CONFIGS / "v1.yaml", ["model.name_or_path=tiny"])
    found, effective = plan_for_run(cfg, lengths, 10, torch.device("cpu"), processes=1, fsdp=False)
    assert found.budget_gib is None and found.lines() == [
        "memory plan: none (training on the CPU: no GPU memory to plan)"
    ]
    assert effective.speed.offload_activations is False and cfg.speed.offload_activations == "auto"
    on_a_gpu, _ = plan_for_run(cfg, lengths, 10, None, processes=1, fsdp=False, budget_size="24GiB", training=False)
    assert on_a_gpu.fits and on_a_gpu.budget_gib == pytest.approx(size_budget("24GiB")[0] / GIB)


@pytest.mark.parametrize(
    "text, size", [("20GiB", 20 * 2**30), ("8GB", 8 * 10**9), ("512MiB", 512 * 2**20), ("1.5 GiB", int(1.5 * 2**30))]
)
def test_memory_sizes_parse(text, size):
    assert parse_memory_size(text) == size


@pytest.mark.parametrize("bad", ["20", "20G", "20gib", "-1GiB", "0GiB", "GiB", "twenty GiB", "auto"])
def test_a_bad_budget_is_a_config_error_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"speed\.memory_budget: expected a size such as 20GiB"):
        load_config(
            CONFIGS / "v1.yaml", [f"speed.memory_budget={bad}"] if bad != "auto" else ["speed.memory_budget=Auto"]
        )
    assert load_config(CONFIGS / "v1.yaml", ["speed.memory_budget=24GiB"]).speed.memory_budget == "24GiB"


def test_a_bad_budget_names_the_value_once():
    with pytest.raises(ConfigError) as raised:
        load_config(CONFIGS / "v1.yaml", ["speed.memory_budget=lots"])
    assert str(raised.value).count("'lots'") == 1, str(raised.value)


def test_fsdp_plans_per_process(lengths, tmp_path):
    """Qwen3-32B v1 under FSDP: two processes fit a 24 GiB GPU each (measured: 20.7 and 22.0 GiB peaks under a 24 GiB
    cap); one process holding the whole model cannot, whatever the levers. env.json's memory_plan records both."""
    (tmp_path / "config.json").write_text(json.dumps(qwen3_config("32b")))
    cfg = load_config(CONFIGS / "v1.yaml", [f"model.name_or_path={tmp_path}", "train.parallelism=fsdp"])
    found, effective = plan_for_run(
        cfg, lengths, 400, None, processes=2, fsdp=True, budget_size="24GiB", training=False
    )
    assert found.fits and found.predicted_reserved_gib <= found.budget_gib
    assert (found.as_dict()["processes"], found.as_dict()["parallelism"]) == (2, "fsdp")
    assert "predicted peak per process (fsdp, 2 processes)" in found.lines()[0]
    assert "base weights (4-bit NF4, 1/2 per process; absmax whole)" in found.terms_gib
    assert effective.speed.checkpoint_fraction == 1.0
    with pytest.raises(MemoryBudgetError, match=r"peak per process \(ddp, 2 processes\)"):  # each holds it whole
        plan_for_run(cfg, lengths, 400, None, processes=2, fsdp=False, budget_size="24GiB", training=False)
    with pytest.raises(MemoryBudgetError, match="train.parallelism fsdp over several GPUs"):
        plan_for_run(cfg, lengths, 400, None, processes=1, fsdp=True, budget_size="24GiB", training=False)
