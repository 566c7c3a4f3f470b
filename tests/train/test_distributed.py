"""Data parallelism on CPU: two gloo processes under torchrun train exactly what one process trains, whether they
are started by one torchrun or as two nodes that meet through a rendezvous."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import tiny_config, torchrun_train

from medtune.config import ConfigError, RunConfig, dump_config
from medtune.train.distributed import DistContext, check_global_batch
from medtune.train.recipe import run

OVERRIDES = (
    "lora.dropout=0.0",
    "train.max_steps=2",
    "train.per_device_batch_size=1",
    "train.gradient_accumulation_steps=4",
    "train.eval_steps=2",
    "train.save_steps=2",
    "train.logging_steps=1",
)


@pytest.fixture(scope="module")
def single(tmp_path_factory, short_rows_file) -> Path:
    """The one-process run both tests compare with."""
    return run(tiny_config("v1", tmp_path_factory.mktemp("one"), short_rows_file, *OVERRIDES))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(single: Path, parallel: Path, cfg: RunConfig) -> None:
    one, two = records(single), records(parallel)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for key in ("loss", "loss_think", "loss_answer", "grad_norm", "eval_loss", "learning_rate"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]) + 1e-7, (key, a, b)
        assert a.get("tokens_seen") == b.get("tokens_seen") and a.get("eval_tokens") == b.get("eval_tokens")
    wa, wb = (
        load_file(single / "adapter" / "adapter_model.safetensors"),
        load_file(parallel / "adapter" / "adapter_model.safetensors"),
    )
    assert wa.keys() == wb.keys()
    # One process and two sum a step's fp32 gradients in a different order, so each gradient element differs by
    # about eps_fp32 (1.2e-7) x sqrt(summed terms) of its scale; the losses above agree to 1e-6. AdamW divides each
    # element by its own running RMS, so an element whose gradient is itself at that noise level can move by up
    # to lr per step differently in the two runs. Hence: nearly every element agrees tightly, the rare exceptions
    # (at most 1 in 1,000 per tensor) stay within AdamW's largest possible move, lr x steps, and whole tensors
    # agree in norm. A wrong gradient (a missing micro-batch, a rank's rows twice) breaks all three.
    lr, steps = cfg.train.lr, cfg.train.max_steps
    for key in wa:
        off = ~torch.isclose(wa[key], wb[key], rtol=1e-3, atol=1e-5)
        assert off.sum().item() <= max(1, wa[key].numel() // 1000), (key, off.sum().item())
        assert (wa[key] - wb[key]).abs().max().item() <= lr * steps, key
        assert (wa[key] - wb[key]).norm() <= 1e-3 * wa[key].norm() + 1e-6, key


def test_two_processes_equal_one_on_the_same_global_batch(tmp_path, short_rows_file, single):
    cfg = tiny_config("v1", tmp_path / "two", short_rows_file, *OVERRIDES)
    done = torchrun_train(cfg, tmp_path / "two.yaml")
    parallel = cfg.run_dir()
    assert_same_training(single, parallel, cfg)
    env_json = json.loads((parallel / "env.json").read_text())
    assert env_json["processes"] == 2
    assert env_json["batch"] == {
        "global_batch": 4,
        "processes": 2,
        "per_device_batch_size": 1,
        "samples_per_process": 2,
        "micro_batches_per_process": 2,
        "packed_row_tokens": 16384,
        "parallelism": "ddp",
    }
    assert "batch: 4 samples per optimizer step" in done.stderr  # rich wraps the rest of the line
    assert json.loads((single / "env.json").read_text())["batch"]["parallelism"] == "none"


def test_two_processes_with_a_sharded_optimizer_equal_one(tmp_path, short_rows_file, single):
    """train.shard_optimizer: each process steps its own trained tensors and sends them to the other."""
    cfg = tiny_config("v1", tmp_path / "two", short_rows_file, *OVERRIDES, "train.shard_optimizer=true")
    torchrun_train(cfg, tmp_path / "two.yaml")
    assert_same_training(single, cfg.run_dir(), cfg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_meeting_through_a_rendezvous_equal_one_process(tmp_path, short_rows_file, single):
    """Two torchrun launches of one process each, as on two machines (`--nnodes 2`, c10d rendezvous). Unpacked
    (`train.packing=false`), each process runs two micro-batches: the first accumulates its gradients locally
    (DDP's no_sync), the second's backward pass sums them across the nodes."""
    cfg = tiny_config("v1", tmp_path / "nodes", short_rows_file, *OVERRIDES, "train.packing=false")
    config_file = tmp_path / "nodes.yaml"
    config_file.write_text(dump_config(cfg), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(node),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                endpoint,
                "--rdzv_id",
                "medtune-test",
                "-m",
                "medtune.cli",
                "train",
                str(config_file),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=900) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stdout[-2000:] + stderr[-4000:]
    assert_same_training(single, cfg.run_dir(), cfg)
    env_json = json.loads((cfg.run_dir() / "env.json").read_text())
    assert env_json["processes"] == 2
    assert env_json["batch"]["micro_batches_per_process"] == 2 and "packed_row_tokens" not in env_json["batch"]


def test_a_step_needs_a_sample_for_every_process():
    check_global_batch(2, DistContext(rank=0, world_size=2))
    with pytest.raises(ConfigError, match="2 samples per optimizer step, fewer than the 4 processes"):
        check_global_batch(2, DistContext(rank=0, world_size=4))
