"""FSDP-QLoRA on CPU: two gloo processes with sharded 4-bit decoder layers train exactly what one process trains,
and checkpoints keep the single-process format, so a run resumes on another process count."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medtune.config import ConfigError, ModelConfig, QuantConfig, RunConfig, dump_config
from medtune.model.load import load_base_model
from medtune.train.checkpoint import load_training_state
from medtune.train.recipe import run
from tests.conftest import tiny_config

OVERRIDES = ("lora.dropout=0.0", "train.max_steps=2", "train.per_device_batch_size=1", "train.gradient_accumulation_steps=3",
             "train.eval_steps=2", "train.save_steps=1", "train.logging_steps=1")


def torchrun_train(cfg: RunConfig, config_file: Path, *args: str) -> Path:
    config_file.write_text(dump_config(cfg), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29527",
                           "-m", "medtune.cli", "train", str(config_file), *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return cfg.run_dir()


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_adapter(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-3, atol=1e-5), key


def test_fsdp_two_processes_resume_a_single_process_run_and_train_what_it_trains(tmp_path, short_rows_file):
    """One process trains steps 1-2; two FSDP processes resume its step-1 checkpoint (moments sharded on load) and
    train step 2 (3 samples: one process pads with a zero-weight forward), eval, and save: all as the one process did."""
    single = run(tiny_config("v1", tmp_path / "one", short_rows_file, *OVERRIDES))

    cfg = tiny_config("v1", tmp_path / "fsdp", short_rows_file, *OVERRIDES, "train.parallelism=fsdp")
    sharded = cfg.run_dir()
    step1 = single / "checkpoints" / "step-000001"
    shutil.copytree(step1, sharded / "checkpoints" / step1.name)
    shutil.copy(single / "metrics.jsonl", sharded / "metrics.jsonl")
    torchrun_train(cfg, tmp_path / "fsdp.yaml", "--resume")

    one, two = records(single), records(sharded)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 2]
    for a, b in zip(one[1:], two[1:]):
        for key in ("loss", "loss_think", "loss_answer", "grad_norm", "eval_loss", "learning_rate"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]) + 1e-7, (key, a, b)
        assert a.get("eval_tokens") == b.get("eval_tokens")
    assert_same_adapter(single / "adapter", sharded / "adapter")
    # FSDP's checkpoint is a single process's: whole adapter tensors, whole optimizer moments under the same indices
    step2 = single / "checkpoints" / "step-000002"
    assert_same_adapter(step2, sharded / "checkpoints" / step2.name)
    state_one, state_two = (load_training_state(run_dir / "checkpoints" / step2.name)["optimizer"] for run_dir in (single, sharded))
    assert state_one["param_groups"] == state_two["param_groups"]
    assert state_one["state"].keys() == state_two["state"].keys()
    for index, moments in state_one["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(moments[key], state_two["state"][index][key], rtol=1e-3, atol=1e-12), (index, key)


def test_parallelism_is_validated(tmp_path, short_rows_file):
    assert tiny_config("v1", tmp_path, short_rows_file).train.parallelism == "ddp"
    with pytest.raises(ConfigError, match="train.parallelism"):
        tiny_config("v1", tmp_path, short_rows_file, "train.parallelism=zero3")


def test_fsdp_stores_4bit_weights_in_the_compute_dtype():
    """FSDP shards the 4-bit weights like the layer's other parameters: stored in the compute dtype, not uint8."""
    def storage(fsdp: bool) -> torch.dtype:
        model = load_base_model(ModelConfig(), QuantConfig(), torch.device("cpu"), fsdp=fsdp).model
        return model.model.layers[0].self_attn.q_proj.weight.dtype

    assert storage(fsdp=False) == torch.uint8
    assert storage(fsdp=True) == torch.float32  # compute_dtype auto: fp32 on CPU, bf16 on CUDA
