"""FSDP for QLoRA (`train.parallelism: fsdp`): each decoder layer's weights are sharded across processes.

Launched like data parallelism (torchrun / accelerate launch) and with the same step math (distributed.py):
every process trains a shard of each optimizer step and gradients are *summed*, so the update equals one
process's on the whole step and checkpoints are written in the single-process format (full tensors, rank 0).

Why FSDP2 (`fully_shard`) and not FSDP1 (`FullyShardedDataParallel(use_orig_params=True)`): FSDP1 flattens
each wrapped layer into one FlatParameter and refuses mixed dtypes ("Must flatten tensors with uniform
dtype"), but a layer holds bf16 norms and 4-bit storage next to fp32 LoRA weights (PEFT upcasts adapters), so
FSDP1 would need one FSDP unit per LoRA matrix. FSDP2 shards each parameter on its own (a DTensor) and
all-gathers mixed dtypes, keeps parameter names (the adapter state dict stays PEFT's), and restores bnb's
Params4bit after each all-gather through `fix_4bit_weight_quant_state_from_module`. The 4-bit storage dtype
still follows the compute dtype (model/load.py), the layout FSDP-QLoRA is documented with.

Decoder layers are sharded (they hold almost all weights), one unit each, gathered for its forward and again
for its backward. A trained lm_head (`lora.modules_to_save`) not tied to the input embedding (Qwen3 8B and
larger) is a unit of its own through the fused head loss (train/loss.py, `FusedHeadLoss`), whose forward reads its
weight: gathered whole for that forward and kept until the backward pass right after it, which needs no weight
(the loss computed the head's gradient in its forward), then its gradient is reduce-scattered, so weight,
gradient and AdamW moments are 1/N per process (5 GB whole on Qwen3-8B). A trained input embedding not tied to
lm_head is a unit of its own too, used at the two ends of the step only. Tied trained embeddings (small Qwen3
sizes) stay whole, one weight used at both ends, summed across processes after the backward pass; so do a frozen
lm_head and the final norm. PEFT's frozen originals of trained modules are never used in training: they are one
unit that is never gathered.

No process holds the whole 4-bit model, not even while loading: each quantizes every weight as transformers reads
it, keeps only the chunk FSDP will give it and drops the rest (model/load.py, `keep_own_shards`), so the 4-bit
weights take one whole weight plus this process's chunks of host and GPU memory at load time. Until `shard_layer`
puts the chunks in place, the layers hold placeholders of the weights' shapes. Rank 0 loading and broadcasting after
sharding (`set_model_state_dict(broadcast_from_rank0=True)`) would still put the whole 4-bit model on rank 0's GPU,
and quantizing only one's own rows would need the whole weight's block scales (double quantization takes their
mean).
"""

from __future__ import annotations

from typing import Any

import bitsandbytes as bnb
import torch
import torch.distributed as dist
from peft.utils import ModulesToSaveWrapper
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from medtune.model.load import WEIGHT_SHARD, WeightShard
from medtune.train.distributed import DistContext
from medtune.train.loss import FusedHeadLoss

Batch = dict[str, Any]


def shard_model(model: nn.Module, head_loss: FusedHeadLoss, ctx: DistContext) -> None:
    """Shard the decoder layers, PEFT's unused originals and untied trained embeddings of a PEFT-wrapped causal LM
    and its head loss in place; call after LoRA, before the optimizer.

    The backbone becomes the FSDP root (with its own weights ignored, i.e. left whole), so one root drives
    the layers' all-gathers and waits for their reduce-scatters at the end of each backward pass; a sharded head
    loss, run after the backbone, is a root of its own.
    """
    causal_lm = model.get_base_model()
    backbone = causal_lm.model
    # Each process keeps a chunk of its own copy, so the copies must be equal: take rank 0's values rather than
    # trust that every process drew the same LoRA init from its seed.
    for param in model.parameters():
        if param.requires_grad:
            dist.broadcast(param.data, src=0)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # In eval mode on a CPU, bitsandbytes repacks a 4-bit weight in place for inference and flags its quant
            # state; under FSDP the next all-gather refills the original layout while the flag stays: wrong weights.
            module.support_avx512bf16_for_cpu = False
    mesh = init_device_mesh(ctx.device().type, (ctx.world_size,))
    layers = list(backbone.layers)
    for layer in layers:
        shard_layer(layer, mesh)
    originals = [m.original_module for m in causal_lm.modules() if isinstance(m, ModulesToSaveWrapper)]
    if originals:
        fully_shard(originals, mesh=mesh)  # one unit: tied originals share a weight
    embeddings = untied_trained_input_embeddings(causal_lm)
    for embedding in embeddings:
        fully_shard(embedding, mesh=mesh)
    units = [*layers, *originals, *embeddings]
    in_units = {id(p) for module in units for p in module.parameters()}
    fully_shard(backbone, mesh=mesh, ignored_params={p for p in backbone.parameters() if id(p) not in in_units})
    roots = [backbone]
    if trained_head_untied(causal_lm):
        # The trained copy itself, not PEFT's wrapper, whose frozen original is in the backbone's tree of units.
        # Kept whole from the loss's forward to its backward, which follows at once: one gather per micro-batch.
        head_loss.head = active_trained_copy(causal_lm.get_output_embeddings())
        fully_shard(head_loss, mesh=mesh, reshard_after_forward=False)
        head_loss.register_forward_hook(reshard_without_backward)  # runs after FSDP's own post-forward hook
        roots.append(head_loss)
    for module in [*units, *roots]:  # losses are already divided by the whole step's tokens: sum, not mean
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no PREMUL_SUM, and x1 needs no scaling
    unplaced = [name for name, module in model.named_modules() if WEIGHT_SHARD in vars(module)]
    if unplaced:
        raise RuntimeError(
            f"FSDP: {', '.join(unplaced)} were loaded as this process's shard only (model/load.py), but "
            "are outside the decoder layers FSDP shards; their whole weights were never kept"
        )


def shard_layer(layer: nn.Module, mesh: DeviceMesh) -> None:
    """fully_shard one decoder layer whose 4-bit weights were loaded as this process's shards only (model/load.py).

    Their placeholders become meta tensors first, so FSDP allocates nothing for them and records only their
    shape; each process's chunk then replaces the meta shard through `load_state_dict(assign=True)`, whose hook
    FSDP2 registers to adopt a new local tensor (the way FSDP2 fills a model built on the meta device).
    """
    loaded: dict[nn.Module, WeightShard] = {
        module: vars(module).pop(WEIGHT_SHARD) for module in layer.modules() if WEIGHT_SHARD in vars(module)
    }
    for module in loaded:
        shape, dtype = module.weight.shape, module.weight.dtype
        module.weight = nn.Parameter(torch.empty(shape, dtype=dtype, device="meta"), requires_grad=False)
    fully_shard(layer, mesh=mesh)
    for module, shard in loaded.items():
        meta: DTensor = module.weight
        fsdp_keeps = (mesh.get_local_rank(), mesh.size(), meta.to_local().shape)
        if (shard.rank, shard.processes, shard.local.shape) != fsdp_keeps:
            raise RuntimeError(
                f"FSDP: a 4-bit weight was loaded as chunk {shard.rank} of {shard.processes} "
                f"({tuple(shard.local.shape)}), but FSDP keeps chunk {fsdp_keeps[0]} of {fsdp_keeps[1]} "
                f"({tuple(fsdp_keeps[2])}) on this process"
            )
        filled = DTensor.from_local(
            shard.local, meta.device_mesh, meta.placements, run_check=False, shape=meta.shape, stride=meta.stride()
        )
        module.load_state_dict({"weight": filled}, strict=False, assign=True)


def untied_trained_input_embeddings(causal_lm: nn.Module) -> list[nn.Module]:
    """The trained copies of the input embeddings (`lora.modules_to_save`) that share no weight with lm_head.

    Each is a unit of its own, gathered only for its forward and its backward pass, so its gradient and optimizer
    moments are sharded too (2 x 622M weights on Qwen3-8B); an embedding tied to lm_head stays whole.
    """
    wrapper = causal_lm.get_input_embeddings()
    if not isinstance(wrapper, ModulesToSaveWrapper):
        return []
    head = {id(p) for p in causal_lm.get_output_embeddings().parameters()}
    return [
        trained for trained in wrapper.modules_to_save.values() if not any(id(p) in head for p in trained.parameters())
    ]


def reshard_without_backward(module: nn.Module, args: Any, output: Any) -> None:
    """Shard the head again after a forward with no backward pass to follow (eval), as its backward would have.

    Left gathered, the next `state_dict()` on it, which PEFT calls while saving on rank 0 only, would reshard it on
    rank 0 alone, and the next training forward would all-gather on rank 0 only: every process waits forever.
    """
    if not torch.is_grad_enabled():
        module.reshard()


def active_trained_copy(wrapper: ModulesToSaveWrapper) -> nn.Module:
    return wrapper.modules_to_save[wrapper.active_adapters[0]]


def trained_head_untied(causal_lm: nn.Module) -> bool:
    """Whether lm_head is trained (`lora.modules_to_save`) and shares no weight with the input embeddings."""
    head = causal_lm.get_output_embeddings()
    if not isinstance(head, ModulesToSaveWrapper):
        return False
    embedding = {id(p) for p in causal_lm.get_input_embeddings().parameters()}
    return not any(id(p) in embedding for trained in head.modules_to_save.values() for p in trained.parameters())


def sum_whole_gradients(params: list[nn.Parameter]) -> None:
    """Sum the gradients of the trained weights FSDP leaves whole across processes, in place: trained embeddings,
    a few large tensors, so no flat copy. FSDP has reduce-scattered the sharded ones in the backward pass."""
    for param in params:
        if not is_sharded(param) and param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)


def is_sharded(param: torch.Tensor) -> bool:
    return isinstance(param, DTensor)


def even_forwards(batches: list[Batch], ctx: DistContext) -> list[tuple[Batch, float]]:
    """This process's micro-batches with their loss weights, padded to the largest count of any process.

    Under FSDP every forward and backward pass all-gathers each layer, a collective: a process with fewer
    micro-batches (packing makes counts differ) would leave the others waiting forever. It repeats its first
    micro-batch with weight 0 instead, which adds nothing to losses or gradients.
    """
    count = torch.tensor([len(batches)], device=ctx.device())  # NCCL reduces CUDA tensors only
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    if not batches:
        raise ValueError(
            f"FSDP: process {ctx.rank} got no sample to forward while others did; every process needs at "
            f"least one sample per optimizer step and of the validation set ({ctx.world_size} processes)"
        )
    return [(batch, 1.0) for batch in batches] + [(batches[0], 0.0)] * (int(count) - len(batches))


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ over sharded (DTensor) and whole gradients together; returns the total norm.

    torch's own clip handles DTensor gradients but cannot stack their norms with plain tensors' ones, which
    trained embeddings (left whole) would give; here the two partial norms are combined by hand.
    """
    sharded = [p for p in params if p.grad is not None and is_sharded(p)]
    whole = [p for p in params if p.grad is not None and not is_sharded(p)]
    squares = torch.zeros((), dtype=torch.float32)
    if sharded:
        squares += get_total_norm([p.grad for p in sharded]).full_tensor().float().cpu() ** 2  # all-reduce
    if whole:
        squares += get_total_norm([p.grad for p in whole]).float().cpu() ** 2
    total = squares.sqrt()
    for group in (sharded, whole):
        if group:
            clip_grads_with_norm_(group, max_norm, total)
    return total


def full_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trained parameter whole, under each of its names as in a state dict (tied embeddings trained in full
    are one weight with two names, and PEFT reads both); a collective: call on every process."""
    whole: dict[int, torch.Tensor] = {}
    state = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.requires_grad:
            if id(p) not in whole:  # a copy: a weight gathered whole now (the head after eval) is freed by the
                # next state_dict() call on its module (FSDP's hook reshards it), PEFT's saving included
                whole[id(p)] = (p.full_tensor() if is_sharded(p) else p).detach().to("cpu", copy=True)
            state[name] = whole[id(p)]
    return state


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with sharded moments gathered whole, i.e. a single process's; a collective."""
    state = optimizer.state_dict()
    state["state"] = {
        index: {key: value.full_tensor().cpu() if isinstance(value, DTensor) else value for key, value in entry.items()}
        for index, entry in state["state"].items()
    }
    return state


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a single-process optimizer state, sharding each moment like its parameter (any process count)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    indices = [index for group in state["param_groups"] for index in group["params"]]
    by_index = dict(zip(indices, params))

    def like_param(value: Any, param: torch.Tensor) -> Any:
        if is_sharded(param) and isinstance(value, torch.Tensor) and value.shape == param.shape:
            return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)  # a collective
        return value  # e.g. AdamW's step count

    moments = {
        index: {key: like_param(value, by_index[index]) for key, value in entry.items()}
        for index, entry in state["state"].items()
    }
    optimizer.load_state_dict({**state, "state": moments})
