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
larger) is split by rows (the vocabulary) outside FSDP's units and never gathered: the fused head loss
(train/loss.py) gathers the processes' hidden states instead, each process computes its rows' logits for all of
them, and its rows' gradient is complete without a reduction, so weight, gradient, the loss's fp32 accumulator and
optimizer moments are 1/N per process (the weight alone is 1.2 GB on Qwen3-8B). A trained input embedding not tied to
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
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from medtune.config import ConfigError
from medtune.model.load import WEIGHT_SHARD, WeightShard
from medtune.train.distributed import DistContext
from medtune.train.loss import FusedHeadLoss, head_weight

Batch = dict[str, Any]


def shard_model(model: nn.Module, head_loss: FusedHeadLoss, ctx: DistContext) -> None:
    """Shard the decoder layers, PEFT's unused originals and untied trained embeddings of a PEFT-wrapped causal LM
    and its head loss in place; call after LoRA, before the optimizer.

    The backbone becomes the FSDP root (with its own weights ignored, i.e. left whole), so one root drives
    the layers' all-gathers and waits for their reduce-scatters at the end of each backward pass.
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
    if trained_head_untied(causal_lm):
        # The trained copy itself, not PEFT's wrapper, whose frozen original is in the backbone's tree of units.
        head_loss.head = active_trained_copy(causal_lm.get_output_embeddings())
        shard_rows(head_loss.head, mesh)
    for module in [*units, backbone]:  # losses are already divided by the whole step's tokens: sum, not mean
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


def shard_rows(head: nn.Module, mesh: DeviceMesh) -> None:
    """Split a trained lm_head's weight by rows (the vocabulary) over the processes, outside FSDP's units: never
    gathered, the loss computes each process's rows' logits for every process's tokens (train/loss.py,
    `vocab_sharded_linear_cross_entropy`), so each process's rows get their whole gradient with no reduction."""
    whole = head_weight(head)
    head.weight = nn.Parameter(distribute_tensor(whole.detach(), mesh, [Shard(0)]), requires_grad=whole.requires_grad)


def active_trained_copy(wrapper: ModulesToSaveWrapper) -> nn.Module:
    return wrapper.modules_to_save[wrapper.active_adapters[0]]


def trained_head_untied(causal_lm: nn.Module) -> bool:
    """Whether lm_head is trained (`lora.modules_to_save`) and shares no weight with the input embeddings."""
    head = causal_lm.get_output_embeddings()
    if not isinstance(head, ModulesToSaveWrapper):
        return False
    embedding = {id(p) for p in causal_lm.get_input_embeddings().parameters()}
    return not any(id(p) in embedding for trained in head.modules_to_save.values() for p in trained.parameters())


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


class LocalShards:
    """The trained parameters as the optimizer steps them under FSDP: plain tensors, not DTensors.

    Each sharded parameter is stepped through its local chunk, a view of the storage FSDP gathers from, so the
    update lands in the weight; a parameter FSDP leaves whole (tied trained embeddings) is stepped as itself. Why
    not the DTensors: every DTensor operation is dispatched in Python, per tensor (an optimizer cannot batch them
    with the whole ones into one multi-tensor kernel), and a norm over them all-reduces per tensor. Over Qwen3-8B
    v2's 506 trained tensors on two CPU processes, AdamW took 81 ms per step on the DTensors against 10 ms on their
    chunks, and the gradient norm 113 ms against one all-reduce (bench/fsdp_step_overhead.py). Plain chunks also
    let bitsandbytes' 8-bit optimizers step under FSDP, each moment and block scale sharded like its parameter.
    """

    def __init__(self, params: list[nn.Parameter], ctx: DistContext) -> None:
        self.params = params
        self.ctx = ctx
        with torch.no_grad():  # outside autograd, to_local() is the DTensor's own local tensor: a view, a leaf
            self.tensors: list[torch.Tensor] = [p.to_local() if is_sharded(p) else p for p in params]

    def take_gradients(self) -> None:
        """Complete the step's gradients: sum the whole ones across processes and move each sharded parameter's
        reduce-scattered gradient onto its chunk (the parameter's is cleared, so FSDP starts the next step from
        none, as the optimizer's zero_grad leaves the chunks)."""
        for param, local in zip(self.params, self.tensors):
            if not is_sharded(param):
                if param.grad is not None:
                    dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
                continue
            if param.to_local().data_ptr() != local.data_ptr():
                raise RuntimeError(
                    "FSDP moved a trained parameter's storage after the optimizer was built; its updates would be lost"
                )
            local.grad, param.grad = (None if param.grad is None else param.grad.to_local()), None

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip every gradient to a total norm of `max_norm` in place; returns the total norm before clipping.
        The sharded chunks' squares are summed across processes in one all-reduce; whole gradients are equal on
        every process already."""
        sharded = [t.grad for p, t in zip(self.params, self.tensors) if is_sharded(p) and t.grad is not None]
        whole = [t.grad for p, t in zip(self.params, self.tensors) if not is_sharded(p) and t.grad is not None]
        squares = torch.zeros((), dtype=torch.float32, device=self.ctx.device())
        if sharded:
            squares += get_total_norm(sharded).float() ** 2
        dist.all_reduce(squares, op=dist.ReduceOp.SUM)
        if whole:
            squares += get_total_norm(whole).float() ** 2
        total = squares.sqrt()
        clip_grads_with_norm_(self.tensors, max_norm, total)  # the tensors whose .grad to scale
        return total

    def _by_index(self, state: dict[str, Any]) -> dict[int, nn.Parameter]:
        indices = [index for group in state["param_groups"] for index in group["params"]]
        return dict(zip(indices, self.params))

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """optimizer.state_dict() with every sharded state whole, i.e. a single process's; a collective."""
        state = optimizer.state_dict()
        by_index = self._by_index(state)
        state["state"] = {
            index: {key: self._whole(key, value, by_index[index]) for key, value in entry.items()}
            for index, entry in state["state"].items()
        }
        return state

    def load_full_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a single process's optimizer state, each process taking its chunk of every sharded state."""
        by_index = self._by_index(state)
        local = {
            index: {key: self._chunk(key, value, by_index[index]) for key, value in entry.items()}
            for index, entry in state["state"].items()
        }
        optimizer.load_state_dict({**state, "state": local})

    def _whole(self, key: str, value: Any, param: nn.Parameter) -> Any:
        if isinstance(value, dict):  # bitsandbytes nests its 8-bit states and scales under one key
            return {inner: self._whole(inner, item, param) for inner, item in value.items()}
        if not is_sharded(param) or not isinstance(value, torch.Tensor):
            return value
        if key in BLOCK_SCALES:  # 8-bit moments' scales, one per block of the chunk (see check_8bit_layout)
            chunks = [torch.empty_like(value) for _ in range(self.ctx.world_size)]
            dist.all_gather(chunks, value.contiguous())
            return torch.cat(chunks).cpu()
        if value.dim() > 0 and value.shape == param.to_local().shape:  # a moment: one number per weight
            whole = DTensor.from_local(
                value, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
            )
            return whole.full_tensor().cpu()
        return value  # the step count, 8-bit quantization maps: the same on every process

    def _chunk(self, key: str, value: Any, param: nn.Parameter) -> Any:
        if isinstance(value, dict):
            return {inner: self._chunk(inner, item, param) for inner, item in value.items()}
        if not is_sharded(param) or not isinstance(value, torch.Tensor):
            return value
        if key in BLOCK_SCALES:
            return value.chunk(self.ctx.world_size)[self.ctx.rank].clone()  # equal chunks: check_8bit_layout
        if value.dim() > 0 and value.shape == param.shape:  # this process's rows, as FSDP chunks the weight
            on_device = value.to(param.to_local().device)
            return distribute_tensor(on_device, param.device_mesh, param.placements, src_data_rank=None).to_local()
        return value

    def check_8bit_layout(self) -> None:
        """Raise ConfigError unless bitsandbytes' 8-bit states of the chunks join into the whole weights' states, as a
        single process's checkpoint holds them: every sharded weight splits into equal chunks of whole 256-value
        blocks (the block scales then concatenate), and a tensor keeps 8-bit states exactly when its whole weight
        would (`min_8bit_size`, which bitsandbytes compares with the tensor it steps)."""
        for param, local in zip(self.params, self.tensors):
            eight_bit = param.numel() >= MIN_8BIT_SIZE
            equal_blocks = param.shape[0] % self.ctx.world_size == 0 and local.numel() % QUANTIZATION_BLOCK == 0
            split_blocks = is_sharded(param) and eight_bit and not equal_blocks
            if eight_bit != (local.numel() >= self.min_8bit_size) or split_blocks:
                raise ConfigError(
                    f"train.optimizer: an 8-bit optimizer under FSDP needs every trained weight in "
                    f"{self.ctx.world_size} equal chunks of whole {QUANTIZATION_BLOCK}-value blocks; a weight of shape "
                    f"{tuple(param.shape)} is not. Use train.optimizer: adamw"
                )

    @property
    def min_8bit_size(self) -> int:
        """bitsandbytes' threshold for 8-bit states, per chunk: a chunk is 1/N of its weight."""
        return MIN_8BIT_SIZE // self.ctx.world_size


BLOCK_SCALES = ("absmax1", "absmax2")
QUANTIZATION_BLOCK = 256  # bitsandbytes' 8-bit optimizers quantize each state in blocks of 256 values
MIN_8BIT_SIZE = 4096  # bitsandbytes' default min_8bit_size: smaller tensors keep 32-bit states
