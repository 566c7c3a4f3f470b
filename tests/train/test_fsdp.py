"""FSDP-QLoRA on CPU: two gloo processes with sharded 4-bit decoder layers train exactly what one process trains,
and checkpoints keep the single-process format, so a run resumes on another process count.

The recipe is v2's with the tiny model's tied embeddings trained as two copies (`tied_embeddings: untie`), the
layout of Qwen3 8B and larger: the trained input embedding is a sharded unit of its own, the trained lm_head stays
whole and is summed across processes, and PEFT's frozen originals are sharded as a unit that is never gathered."""

from __future__ import annotations

import copy
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
from medtune.train.distributed import DistContext
from medtune.train.fsdp import MIN_8BIT_SIZE, LocalShards
from medtune.train.interrupt import TrainingInterrupted
from medtune.train.parallel import build_optimizer
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


def assert_same_adapter(a: Path, b: Path, flipped_codes: float = 0.0, lr: float = 0.0) -> None:
    """Equal to fp32 summation order; with 8-bit moments, a share `flipped_codes` of the weights may be off by more,
    at most one step's learning rate (an AdamW update moves a weight by about lr at most)."""
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        outside = ~torch.isclose(wa[key], wb[key], rtol=1e-3, atol=1e-5)
        assert outside.float().mean() <= flipped_codes, key
        assert bool(((wa[key] - wb[key])[outside].abs() <= lr).all()), key


@pytest.mark.parametrize("optimizer", ["adamw", "adamw_8bit"])
def test_fsdp_two_processes_resume_a_single_process_run_and_train_what_it_trains(
    tmp_path, short_rows_file, monkeypatch, optimizer
):
    """One process trains steps 1-3; another is stopped after step 1, whose checkpoint keeps the training state. Two
    FSDP processes resume that checkpoint (moments sharded on load) and train steps 2-3 (3 samples: one process pads
    with a zero-weight forward), save a checkpoint at step 2, eval, and save the adapter: all as the one process did.
    With bitsandbytes' 8-bit AdamW too: each process steps its chunks' 8-bit states."""
    overrides = (*OVERRIDES, f"train.optimizer={optimizer}")
    single = run(tiny_config("v2", tmp_path / "one", short_rows_file, *overrides))

    stopped = tiny_config("v2", tmp_path / "stopped", short_rows_file, *overrides)
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

    cfg = tiny_config("v2", tmp_path / "fsdp", short_rows_file, *overrides, "train.parallelism=fsdp")
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
    # 8-bit moments: a gradient summed in another order can round a state to the neighbouring 8-bit code (seen: 11 of
    # lm_head's 9.7M weights, by up to 3.7e-5, on weights of mean size 0.016)
    eight_bit = {"flipped_codes": 1e-4, "lr": cfg.train.lr} if optimizer != "adamw" else {}
    assert_same_adapter(single / "adapter", sharded / "adapter", **eight_bit)
    # FSDP's checkpoint is a single process's: whole adapter tensors under PEFT's names
    assert_same_adapter(RunFolder(single).checkpoint(2), RunFolder(sharded).checkpoint(2), **eight_bit)


def _step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grads: list[torch.Tensor], shards=None) -> None:
    """One update; with `shards`, as two processes see it: a whole weight's gradient is half of it on each."""
    for param, grad in zip(params, grads):
        if isinstance(param, DTensor):
            param.grad = distribute_tensor(grad, param.device_mesh, param.placements)
        else:
            param.grad = grad / 2 if shards is not None else grad.clone()
    if shards is not None:
        shards.take_gradients()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _flat(entry: dict) -> dict[str, torch.Tensor]:
    """An optimizer state entry's tensors, bitsandbytes' nested 8-bit states included, under torch AdamW's names."""
    names = {"exp_avg": "state1", "exp_avg_sq": "state2"}
    flat = {}
    for key, value in entry.items():
        if isinstance(value, dict):
            flat.update(_flat(value))
        elif isinstance(value, torch.Tensor) and value.dim() > 0:
            flat[names.get(key, key)] = value
    return flat


def _local_shards_round_trip(rank: int, init_file: str) -> None:
    """Each optimizer steps two processes' chunks of two sharded weights (one large enough for 8-bit states) and a
    whole one, against one process stepping them whole: same weights, the same single-process state (gathered), and
    a resume from it on two processes that steps on identically. The gradient norm and clip are one process's too."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ctx = DistContext(rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(16, 512, generator=generator), torch.randn(6, 4, generator=generator), torch.randn(3)]
    steps = [[torch.randn(w.shape, generator=generator) for w in weights] for _ in range(3)]

    def sharded() -> list[nn.Parameter]:
        return [nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])) for w in weights[:2]] + [
            nn.Parameter(weights[2].clone())
        ]

    for name in ("adamw", "adamw_8bit"):
        one = [nn.Parameter(w.clone()) for w in weights]
        reference = build_optimizer(one, name, MIN_8BIT_SIZE, lr=0.1)
        params = sharded()
        shards = LocalShards(params, ctx)
        shards.check_8bit_layout()
        optimizer = build_optimizer(shards.tensors, name, shards.min_8bit_size, lr=0.1)
        for grads in steps[:2]:
            _step(reference, one, grads)
            _step(optimizer, params, grads, shards)
        for mine, whole in zip(params, one):
            assert torch.allclose(mine.full_tensor() if isinstance(mine, DTensor) else mine, whole), name
        gathered, expected = shards.full_optimizer_state(optimizer), copy.deepcopy(reference.state_dict())
        assert gathered["param_groups"] == expected["param_groups"]
        assert gathered["state"].keys() == expected["state"].keys()
        for index, entry in expected["state"].items():
            mine, theirs = _flat(gathered["state"][index]), _flat(entry)
            assert mine.keys() == theirs.keys(), (name, index)
            for key, value in theirs.items():
                assert torch.equal(mine[key], value) if value.dtype == torch.uint8 else torch.allclose(mine[key], value)
        assert _flat(expected["state"][0])["state1"].dtype == (torch.uint8 if name == "adamw_8bit" else torch.float32)

        with torch.no_grad():  # the checkpoint's adapter weights
            resumed = [nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])) for w in one[:2]] + [
                nn.Parameter(one[2].detach().clone())
            ]
        resumed_shards = LocalShards(resumed, ctx)
        fresh = build_optimizer(resumed_shards.tensors, name, resumed_shards.min_8bit_size, lr=0.1)
        resumed_shards.load_full_optimizer_state(fresh, expected)
        _step(reference, one, steps[2])
        _step(fresh, resumed, steps[2], resumed_shards)
        for mine, whole in zip(resumed, one):
            assert torch.allclose(mine.full_tensor() if isinstance(mine, DTensor) else mine, whole), name

    params = sharded()
    shards = LocalShards(params, ctx)
    for param, grad in zip(params, steps[0]):
        param.grad = distribute_tensor(grad, mesh, [Shard(0)]) if isinstance(param, DTensor) else grad / 2
    shards.take_gradients()  # the whole weight's gradient is summed over the two processes: grad / 2 each
    total = shards.clip_grad_norm_(1.0)
    assert torch.allclose(total, torch.linalg.vector_norm(torch.cat([g.flatten() for g in steps[0]])))
    assert all(p.grad is None for p in params[:2]), "the gradient moved to the chunk the optimizer steps"
    chunk_squares = sum(t.grad.pow(2).sum() for t in shards.tensors[:2])
    dist.all_reduce(chunk_squares)
    assert float((chunk_squares + shards.tensors[2].grad.pow(2).sum()).sqrt()) == pytest.approx(1.0, rel=1e-5)
    leave_process_group()


def test_local_shards_step_save_and_resume_like_one_process(tmp_path):
    """Under FSDP the optimizer steps each process's chunk as a plain tensor (torch AdamW and bitsandbytes' 8-bit);
    checkpoints hold a single process's optimizer state, and resume chunks it again (a complete run keeps no
    training state, so the end-to-end test above cannot read the one FSDP writes)."""
    torch.multiprocessing.spawn(_local_shards_round_trip, args=(str(tmp_path / "rendezvous"),), nprocs=2)


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
