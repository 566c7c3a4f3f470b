"""bench/gpu_speed.py's profiled step: where a step's wall time went on each GPU (device idle, communication not
hidden behind compute), from `multigpu:...:profile` stages, and how the report shows it."""

from __future__ import annotations

import argparse

import pytest
import torch


def test_busy_time_is_the_union_of_kernel_intervals(gpu_speed):
    assert gpu_speed.union_seconds([(5.0, 20.0), (0.0, 10.0), (30.0, 40.0), (32.0, 35.0)]) == pytest.approx(30e-6)
    assert gpu_speed.union_seconds([]) == 0.0


def test_nccl_kernels_are_communication(gpu_speed):
    assert gpu_speed.kernel_kind("ncclDevKernel_AllReduce_Sum_bf16_RING_LL") == gpu_speed.COMMUNICATION
    assert gpu_speed.kernel_kind("ncclDevKernel_ReduceScatter_Sum_f32_RING_LL") == gpu_speed.COMMUNICATION
    assert gpu_speed.kernel_kind("void cutlass::Kernel<...gemm...>") == "matmul"


def test_a_profiled_step_on_the_cpu_has_wall_time_and_no_kernels(gpu_speed):
    weight = torch.randn(64, 64, requires_grad=True)
    summary, prof = gpu_speed.profiled(lambda: (weight @ weight).sum().backward())
    assert summary["wall_s"] > 0 and summary["kernels"] == 0
    assert summary["device_busy_s"] == summary["communication_alone_s"] == 0.0
    assert "aten::mm" in prof.key_averages().table(sort_by="self_cpu_time_total")


def test_the_profile_modifier_reaches_the_stage_and_is_not_a_variant(gpu_speed):
    options = argparse.Namespace(
        size="1.7b", nproc=2, work="w", out="o", warmup=1, steps=1, tiny=False, memory_cap=None
    )
    command = gpu_speed.stage_command("multigpu", ["8b", "v2", "ddp", "cap24", "row_ckpt100", "profile"], options)
    assert "--profile" in command and command[command.index("--memory-cap") + 1] == "24"
    stage = command.index("multigpu")
    assert command[stage + 1 : stage + 3] == ["v2", "row_ckpt100"]
    assert "--profile" not in gpu_speed.stage_command("multigpu", ["8b", "v2", "ddp"], options)


def test_the_report_shows_each_gpus_idle_and_exposed_communication_share(gpu_speed):
    summary = {
        "wall_s": 0.8,
        "device_busy_s": 0.6,
        "communication_alone_s": 0.08,
        "kernels": 1000,
        "kernel_seconds_by_kind": {"matmul": 0.4, gpu_speed.COMMUNICATION: 0.12},
        "kernel_count_by_kind": {"matmul": 600, gpu_speed.COMMUNICATION: 20},
    }
    record = {
        "kind": "multigpu",
        "size": "8b",
        "version": "v2",
        "variant": "auto",
        "parallelism": "ddp",
        "processes": 2,
        "cap_gib": None,
        "status": "ok",
        "tokens_per_s": 15000.0,
        "peak_gib": {"0": 28.7, "1": 28.9},
        "peak_before_timed_gib": {"0": 29.0, "1": 29.1},
        "losses": [12.75],
        "profile": {"0": summary, "1": summary},
    }
    rows = [line for line in gpu_speed.multigpu_report([record]) if line.startswith("| 8b | v2 | auto | ddp | ")]
    profiled = [row for row in rows if "| 0.800 |" in row]
    assert len(profiled) == 2
    assert "| 75% | 25% | 10% |" in profiled[0] and "matmul 0.400" in profiled[0]


def test_host_time_is_filed_under_the_package_that_defines_each_function(gpu_speed):
    site = "/venv/lib/python3.12/site-packages"
    assert gpu_speed.code_package(f"{site}/peft/tuners/lora/layer.py", "forward") == "peft"
    assert gpu_speed.code_package(f"{site}/typing_extensions.py", "f") == "typing_extensions"
    assert gpu_speed.code_package("~", "<built-in method torch._C._nn.linear>") == "torch C calls"
    assert gpu_speed.code_package("~", "<method 'item' of 'torch._C.TensorBase' objects>") == "torch C calls"
    assert gpu_speed.code_package("~", "<built-in method builtins.len>") == "other C calls"
    assert gpu_speed.code_package("/repo/src/medtune/train/recipe.py", "train_step") == "medtune"
    assert gpu_speed.code_package("/usr/lib/python3.12/functools.py", "wrapper") == "python"


def test_a_host_profiled_step_files_its_own_time_by_package_and_function(gpu_speed):
    weight = torch.randn(64, 64, requires_grad=True)

    def step() -> None:
        for _ in range(20):
            (weight @ weight).sum().backward()

    summary, text = gpu_speed.host_profiled(step, top=5)
    assert summary["wall_s"] > 0
    assert summary["own_s_by_package"]["torch C calls"] > 0
    assert sum(summary["own_s_by_package"].values()) <= summary["wall_s"] * 1.5
    own = [f["own_s"] for f in summary["top_functions"]]
    assert len(own) == 5 and own == sorted(own, reverse=True)
    assert any("backward" in f["function"] for f in summary["top_functions"])
    assert "tottime" in text and "cumtime" in text


def test_the_host_profile_modifier_reaches_the_stage_and_is_not_a_variant(gpu_speed):
    options = argparse.Namespace(
        size="1.7b", nproc=1, work="w", out="o", warmup=1, steps=1, tiny=False, memory_cap=None
    )
    command = gpu_speed.stage_command("multigpu", ["8b", "v2", "none", "hostprofile", "shares2"], options)
    assert "--host-profile" in command and command[command.index("--simulate-processes") + 1] == "2"
    stage = command.index("multigpu")
    assert command[stage + 1 : stage + 3] == ["v2", "--work"]


def test_the_report_shows_the_hosts_time_by_package_per_share(gpu_speed):
    profile = {"wall_s": 2.0, "own_s_by_package": {"torch C calls": 1.0, "peft": 0.5}, "top_functions": []}
    record = {
        "kind": "multigpu",
        "size": "8b",
        "version": "v2",
        "variant": "auto",
        "parallelism": "none",
        "processes": 1,
        "cap_gib": None,
        "status": "ok",
        "tokens_per_s": 100.0,
        "simulated_processes": 2,
        "simulated_tokens_per_s": 180.0,
        "host_profile": {"0": [profile, {**profile, "wall_s": 4.0}]},
    }
    text = "\n".join(gpu_speed.multigpu_report([record]))
    assert "| 8b | v2 | auto | 0 | 2.000 | torch C calls 50%, peft 25% |" in text
    assert "| 8b | v2 | auto | 1 | 4.000 | torch C calls 25%, peft 12% |" in text
