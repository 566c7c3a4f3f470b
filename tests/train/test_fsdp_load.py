"""FSDP loading on CPU: each of two gloo processes keeps only its shard of every 4-bit weight while the model loads
(model/load.py), and the model it then trains is bitwise the one a whole load gives: same 4-bit weights, quantization
state, losses and gradients."""

from __future__ import annotations

import torch
import torch.distributed as dist
import transformers.modeling_utils
from peft import PeftModel
from tests.conftest import leave_process_group
from torch import nn

from medtune.config import LoraConfig, ModelConfig, QuantConfig
from medtune.model.load import WEIGHT_SHARD, WHOLE_MODEL_WARMUP, apply_lora, keep_own_shards, load_base_model
from medtune.train.distributed import DistContext
from medtune.train.fsdp import is_sharded, shard_model
from medtune.train.loss import FusedHeadLoss

CPU = torch.device("cpu")
PROCESSES = 2


def four_bit_layers(model: nn.Module) -> dict[str, nn.Module]:
    import bitsandbytes as bnb

    return {name: module for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Packed 4-bit storage read as floats holds NaN patterns, which torch.equal calls unequal to themselves."""
    return a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def trained_model(fsdp_loaded: nn.Module, ctx: DistContext) -> PeftModel:
    """LoRA on every projection with the same non-zero values on every process (B starts at zero, which would leave
    A without a gradient), sharded by FSDP."""
    torch.manual_seed(0)
    model = apply_lora(fsdp_loaded, LoraConfig(dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    shard_model(model, FusedHeadLoss.of(model, 16), ctx)
    return model


def loss_and_gradients(model: PeftModel, rank: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward and backward pass on this process's own tokens; gradients whole (FSDP reduce-scattered them)."""
    generator = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(0, 1000, (2, 12), generator=generator)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {
        name: (p.grad.full_tensor() if is_sharded(p) else p.grad).clone()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    return loss.detach(), grads


def _whole_and_sharded_loads(rank: int, init_file: str) -> None:
    model_cfg, quant_cfg = ModelConfig(), QuantConfig()
    whole = load_base_model(model_cfg, quant_cfg, CPU, fsdp=True).model  # no process group yet: a whole load
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=PROCESSES)
    ctx = DistContext(rank=rank, world_size=PROCESSES)
    own = load_base_model(model_cfg, quant_cfg, CPU, fsdp=True).model

    whole_layers, own_layers = four_bit_layers(whole), four_bit_layers(own)
    assert whole_layers.keys() == own_layers.keys() and whole_layers
    whole_bytes = sum(m.weight.untyped_storage().nbytes() for m in whole_layers.values())
    kept = 0
    for name, module in own_layers.items():
        placeholder = module.weight  # the whole shape, one element of storage
        assert placeholder.untyped_storage().nbytes() == placeholder.element_size(), name
        assert module.weight.shape == whole_layers[name].weight.shape, name
        shard = getattr(module, WEIGHT_SHARD)
        expected = torch.chunk(whole_layers[name].weight.data, PROCESSES)[rank]
        assert same_bits(shard.local, expected), name
        assert torch.equal(module.quant_state.absmax, whole_layers[name].quant_state.absmax), name
        kept += shard.local.untyped_storage().nbytes()
    assert kept == whole_bytes // PROCESSES  # each process holds half of the 4-bit weights, not the whole model

    models = [trained_model(whole, ctx), trained_model(own, ctx)]
    for name, module in four_bit_layers(models[1]).items():
        assert not hasattr(module, WEIGHT_SHARD), name
        mine, reference = module.weight, four_bit_layers(models[0])[name].weight
        assert is_sharded(mine) and same_bits(mine.to_local(), reference.to_local()), name
    (loss_whole, grads_whole), (loss_own, grads_own) = (loss_and_gradients(model, rank) for model in models)
    assert torch.equal(loss_whole, loss_own)
    assert grads_whole.keys() == grads_own.keys()
    for name, grad in grads_whole.items():
        assert torch.equal(grad, grads_own[name]), name
    assert any(grad.abs().sum() > 0 for name, grad in grads_own.items() if "lora_A" in name)
    leave_process_group()


def test_each_process_loads_only_its_shard_and_trains_what_a_whole_load_trains(tmp_path):
    torch.multiprocessing.spawn(_whole_and_sharded_loads, args=(str(tmp_path / "rendezvous"),), nprocs=PROCESSES)


def test_the_whole_model_gpu_warmup_is_left_out_while_a_process_loads_its_shard():
    """transformers allocates the whole model's bytes on the GPU before loading it (CPU runs skip that); kept, the
    whole model would be back in every GPU's load peak. A rename upstream would silently bring it back: fail here."""
    warmup = getattr(transformers.modeling_utils, WHOLE_MODEL_WARMUP)
    with keep_own_shards(rank=0, processes=2):
        left_out = getattr(transformers.modeling_utils, WHOLE_MODEL_WARMUP)
        assert left_out(None, {"model.norm.weight": "cuda:0"}, None) is None  # the real one fails reading the model
    assert getattr(transformers.modeling_utils, WHOLE_MODEL_WARMUP) is warmup
