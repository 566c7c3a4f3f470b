"""FSDP-QLoRA on CPU: two gloo processes with sharded 4-bit decoder layers train exactly what one process trains,
and checkpoints keep the single-process format, so a run resumes on another process count.

The recipe is v2's with the tiny model's tied embeddings trained as two copies (`tied_embeddings: untie`), the
layout of Qwen3 8B and larger: the trained input embedding is a sharded unit of its own, the trained lm_head stays
whole and is summed across processes, and PEFT's frozen originals are sharded as a unit that is never gathered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tests.conftest import leave_process_group, tiny_config, torchrun_train
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from medtune.config import ConfigError, ModelConfig, QuantConfig
from medtune.model.load import load_base_model
from medtune.run_folder import RunFolder
from medtune.train.fsdp import full_optimizer_state, load_full_optimizer_state
from medtune.train.interrupt import TrainingInterrupted
from medtune.train.recipe import FineTuneRecipe, run

OVERRIDES = (
    "lora.dropout=0.0",
    "lora.tied_embeddings=untie",
    "train.max_steps=3",
    "train.per_device_batch_size=1",
    "train.gradient_accumulation_steps=3",
    "train.eval_steps=2",
    "train.save_steps=1",
    "train.logging_steps=1",
)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_adapter(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-3, atol=1e-5), key


def test_fsdp_two_processes_resume_a_single_process_run_and_train_what_it_trains(
    tmp_path, short_rows_file, monkeypatch
):
    """One process trains steps 1-3; another is stopped after step 1, whose checkpoint keeps the training state. Two
    FSDP processes resume that checkpoint (moments sharded on load) and train steps 2-3 (3 samples: one process pads
    with a zero-weight forward), save a checkpoint at step 2, eval, and save the adapter: all as the one process did."""
    single = run(tiny_config("v2", tmp_path / "one", short_rows_file, *OVERRIDES))

    stopped = tiny_config("v2", tmp_path / "stopped", short_rows_file, *OVERRIDES)
    train_step, calls = FineTuneRecipe.train_step, []

    def stop_at_step_2(recipe: FineTuneRecipe, items: list) -> float:
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_step(recipe, items)

    monkeypatch.setattr(FineTuneRecipe, "train_step", stop_at_step_2)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 1"):
        run(stopped)
    monkeypatch.undo()

    cfg = tiny_config("v2", tmp_path / "fsdp", short_rows_file, *OVERRIDES, "train.parallelism=fsdp")
    shutil.copytree(stopped.run_dir(), cfg.run_dir())
    torchrun_train(cfg, tmp_path / "fsdp.yaml", "--resume")
    sharded = cfg.run_dir()

    one, two = records(single), records(sharded)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 2, 3, 3]
    for a, b in zip(one[1:], two[1:]):
        for key in ("loss", "loss_think", "loss_answer", "grad_norm", "eval_loss", "learning_rate"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]) + 1e-7, (key, a, b)
        assert a.get("eval_tokens") == b.get("eval_tokens")
    assert_same_adapter(single / "adapter", sharded / "adapter")
    # FSDP's checkpoint is a single process's: whole adapter tensors under PEFT's names
    assert_same_adapter(RunFolder(single).checkpoint(2), RunFolder(sharded).checkpoint(2))


def _optimizer_state_round_trip(rank: int, init_file: str) -> None:
    """One AdamW step over a sharded (DTensor) and a whole weight on each of two processes, against one process."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(6, 4, generator=generator), torch.randn(3, generator=generator)]
    grads = [torch.randn(6, 4, generator=generator), torch.randn(3, generator=generator)]
    one = [nn.Parameter(w.clone()) for w in weights]
    reference = torch.optim.AdamW(one, lr=0.1)
    for param, grad in zip(one, grads):
        param.grad = grad.clone()
    reference.step()

    def sharded_optimizer() -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
        params = [nn.Parameter(distribute_tensor(weights[0], mesh, [Shard(0)])), nn.Parameter(weights[1].clone())]
        return torch.optim.AdamW(params, lr=0.1), params

    optimizer, params = sharded_optimizer()
    params[0].grad, params[1].grad = distribute_tensor(grads[0], mesh, [Shard(0)]), grads[1].clone()
    optimizer.step()
    gathered = full_optimizer_state(optimizer)  # a single process's state_dict, moments whole
    expected = reference.state_dict()
    assert gathered["param_groups"] == expected["param_groups"]
    for index, moments in expected["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(gathered["state"][index][key], moments[key]), (index, key)

    fresh, fresh_params = sharded_optimizer()  # resuming on two processes: each takes its shard of the moments
    load_full_optimizer_state(fresh, expected)
    local = fresh.state[fresh_params[0]]["exp_avg"]
    assert isinstance(local, DTensor) and torch.equal(local.full_tensor(), expected["state"][0]["exp_avg"])
    assert torch.equal(fresh.state[fresh_params[1]]["exp_avg_sq"], expected["state"][1]["exp_avg_sq"])
    leave_process_group()


def test_optimizer_state_is_gathered_whole_and_sharded_again_on_load(tmp_path):
    """Checkpoints hold a single process's optimizer state under FSDP, and resume shards it again (a complete run
    keeps no training state, so the end-to-end test above cannot read the one FSDP writes)."""
    torch.multiprocessing.spawn(_optimizer_state_round_trip, args=(str(tmp_path / "rendezvous"),), nprocs=2)


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
