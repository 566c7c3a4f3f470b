"""How the processes of a run share each optimizer step: one process, DDP or FSDP, behind one interface.

The recipe asks a `Parallelism` for everything that differs between them (the model's wrapping, the weights of
the forward passes, the gradients' reduction and clipping, the optimizer's constraints, and the whole tensors
a checkpoint holds) and never which one it has. All three keep one step math (distributed.py): losses are
divided by the whole step's token count and gradients are summed, so an update equals one process's on the
whole step, and a checkpoint is a single process's (resumable on any process count).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.utils._pytree import tree_map_only

from medtune.config import ConfigError, TrainConfig
from medtune.train import fsdp
from medtune.train.distributed import DataParallelLoss, DistContext, check_global_batch
from medtune.train.loss import FusedHeadLoss, LossSums, causal_lm_loss_sums, unweighted

Batch = dict[str, Any]
T = TypeVar("T")


class MicroBatchLoss(Protocol):
    def __call__(self, batch: Batch, last: bool) -> LossSums:
        """The loss sums of one micro-batch; under DDP the backward pass of the step's `last` one sums the gradients."""
        ...


class Parallelism(Protocol):
    """What the recipe needs from the way processes share a step; `build_parallelism` picks the implementation."""

    name: str  # "none", "ddp" or "fsdp": the batch layout of env.json reports it
    shards_weights: bool  # FSDP: 4-bit storage in the compute dtype (model/load.py)

    def wrap(self, model: nn.Module, head_loss: FusedHeadLoss) -> MicroBatchLoss:
        """Prepare the LoRA-wrapped model and its head loss in place (after their weights are final, before the
        optimizer) and return the micro-batch loss to train with."""
        ...

    def forwards(self, batches: list[Batch]) -> list[tuple[Batch, float]]:
        """This process's micro-batches paired with loss weights (training and evaluation alike)."""
        ...

    def optimizer(self, params: list[nn.Parameter], name: str, **hyper: Any) -> torch.optim.Optimizer:
        """The optimizer `name` (adamw, adamw_8bit, paged_adamw_8bit) over the trained `params`, built once; the
        gradient and state methods below act on what it steps. ConfigError for one this parallelism cannot step."""
        ...

    def finish_gradients(self) -> None:
        """Complete the step's gradient sum across processes after the last backward pass."""
        ...

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip the trained gradients to `max_norm` in place; returns their total norm before clipping."""
        ...

    def finish_step(self) -> None:
        """After optimizer.step(): every process holds the whole step's weights (DDP with a sharded optimizer:
        each tensor's owner sends it)."""
        ...

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """A single process's optimizer state (a collective under FSDP: every process calls it)."""
        ...

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a single process's optimizer state, saved under any parallelism and process count."""
        ...

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The trained tensors whole, for saving; None where PEFT can read them from the model itself (a collective
        under FSDP: every process calls it)."""
        ...


def build_parallelism(train: TrainConfig, ctx: DistContext) -> Parallelism:
    """One process whatever `train.parallelism` says (there is nothing to share), else DDP or FSDP."""
    check_global_batch(train.samples_per_step(), ctx)
    if not ctx.enabled:
        return SingleProcess()
    if train.parallelism == "fsdp":
        return FullyShardedParallel(ctx)
    return DataParallel(ctx, shard_optimizer=train.shard_optimizer)


def build_optimizer(tensors: list[torch.Tensor], name: str, min_8bit_size: int, **hyper: Any) -> torch.optim.Optimizer:
    """torch AdamW with its multi-tensor kernels (set, so CPU tests take CUDA's path), or bitsandbytes' 8-bit
    AdamW, paged or not, keeping tensors below `min_8bit_size` values in 32 bits."""
    if name == "adamw":
        return torch.optim.AdamW(tensors, foreach=True, **hyper)
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(tensors, min_8bit_size=min_8bit_size, **hyper)


def _restore_foreach(optimizer: torch.optim.Optimizer) -> None:
    """load_state_dict restores the saving process's `foreach` (checkpoints of earlier versions: off under FSDP);
    the multi-tensor kernels hold (torch AdamW only)."""
    if isinstance(optimizer, torch.optim.AdamW):
        for group in optimizer.param_groups:
            group["foreach"] = True


def _local_loss(model: nn.Module, head_loss: FusedHeadLoss) -> MicroBatchLoss:
    """The plain loss: nothing to reduce in the backward pass (one process), or reduced by FSDP's own hooks."""

    def loss(batch: Batch, last: bool) -> LossSums:
        return causal_lm_loss_sums(model, batch, head_loss)

    return loss


class SingleProcess:
    """One process: the model whole, gradients already complete after the backward passes."""

    name = "none"
    shards_weights = False

    def __init__(self) -> None:
        self.params: list[nn.Parameter] = []

    def wrap(self, model: nn.Module, head_loss: FusedHeadLoss) -> MicroBatchLoss:
        return _local_loss(model, head_loss)

    def forwards(self, batches: list[Batch]) -> list[tuple[Batch, float]]:
        return unweighted(batches)

    def optimizer(self, params: list[nn.Parameter], name: str, **hyper: Any) -> torch.optim.Optimizer:
        self.params = params
        return build_optimizer(params, name, fsdp.MIN_8BIT_SIZE, **hyper)

    def finish_gradients(self) -> None:
        """Nothing left to reduce."""

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(self.params, max_norm)

    def finish_step(self) -> None:
        """One process holds every weight it stepped."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)
        _restore_foreach(optimizer)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        return None


class DataParallel(SingleProcess):
    """DDP: every process holds the whole model, as one process does; only the loss differs, run inside torch's
    DistributedDataParallel, which sums the gradients in the backward pass of the step's last micro-batch.

    `shard_optimizer` (train.shard_optimizer, ZeRO stage 1): each trained tensor has one owning process, the
    processes' shares balanced by size, and only its owner steps it and keeps its optimizer states; the owners then
    broadcast the stepped tensors. Why: every process would otherwise repeat the whole optimizer step, which does not
    shrink with the samples each process trains (8-10% of a one-GPU Qwen3-8B v2 step: bench/RESULTS.md). Whole
    tensors, not slices, so each state is the single-process state of its tensor (8-bit blocks included), and a
    checkpoint gathers them into a single process's optimizer state.
    """

    name = "ddp"

    def __init__(self, ctx: DistContext | None = None, shard_optimizer: bool = False) -> None:
        super().__init__()
        self.ctx = ctx or DistContext()
        self.shard_optimizer = shard_optimizer
        self.owners: list[int] = []  # each trained tensor's owning process; empty: every process steps everything

    def wrap(self, model: nn.Module, head_loss: FusedHeadLoss) -> MicroBatchLoss:
        return DataParallelLoss(model, head_loss)

    def optimizer(self, params: list[nn.Parameter], name: str, **hyper: Any) -> torch.optim.Optimizer:
        self.params = params
        if not self.shard_optimizer:
            return build_optimizer(params, name, fsdp.MIN_8BIT_SIZE, **hyper)
        if len(params) < self.ctx.world_size:
            raise ConfigError(
                f"train.shard_optimizer: {len(params)} trained tensors cannot be shared by {self.ctx.world_size} "
                "processes; set it to false"
            )
        self.owners = owners_by_size([p.numel() for p in params], self.ctx.world_size)
        return build_optimizer(self._owned(params), name, fsdp.MIN_8BIT_SIZE, **hyper)

    def finish_step(self) -> None:
        if not self.owners:
            return
        for param, owner in zip(self.params, self.owners):
            if owner != self.ctx.rank:
                param.grad = None  # its owner stepped it; the optimizer's zero_grad clears only what it steps
        broadcast_from_owners(self.params, self.owners)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """A single process's optimizer state on the main process ({} on the others); a collective when sharded."""
        if not self.owners:
            return optimizer.state_dict()
        local = tree_map_only(torch.Tensor, torch.Tensor.cpu, optimizer.state_dict())
        every: list[Any] = [None] * self.ctx.world_size if self.ctx.is_main else []
        dist.gather_object(local, every if self.ctx.is_main else None, dst=0)
        if not self.ctx.is_main:
            return {}
        (group,) = local["param_groups"]
        state: dict[str, Any] = {"state": {}, "param_groups": [{**group, "params": list(range(len(self.params)))}]}
        for rank, rank_state in enumerate(every):
            indices = [i for i, owner in enumerate(self.owners) if owner == rank]
            state["state"].update({indices[local_index]: entry for local_index, entry in rank_state["state"].items()})
        return state

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Each process takes its own tensors' states from a single process's optimizer state."""
        if not self.owners:
            super().load_optimizer_state(optimizer, state)
            return
        indices = self._owned(list(range(len(self.params))))
        (group,) = state["param_groups"]
        local = {
            "state": {k: state["state"][i] for k, i in enumerate(indices) if i in state["state"]},
            "param_groups": [{**group, "params": list(range(len(indices)))}],
        }
        super().load_optimizer_state(optimizer, local)

    def _owned(self, items: list[T]) -> list[T]:
        return [item for item, owner in zip(items, self.owners) if owner == self.ctx.rank]


def owners_by_size(sizes: list[int], processes: int) -> list[int]:
    """Each tensor's owning process: largest first, each to the process with the fewest values so far."""
    owners, totals = [0] * len(sizes), [0] * processes
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        owner = min(range(processes), key=lambda p: totals[p])
        owners[index] = owner
        totals[owner] += sizes[index]
    return owners


def broadcast_from_owners(tensors: list[torch.Tensor], owners: list[int]) -> None:
    """Every process takes each tensor from its owner: one broadcast per owner and dtype, small tensors flattened
    into one buffer (a broadcast per LoRA matrix would be 500 collectives a step for Qwen3-8B)."""
    groups: dict[tuple[int, torch.dtype], list[torch.Tensor]] = {}
    for tensor, owner in zip(tensors, owners):
        groups.setdefault((owner, tensor.dtype), []).append(tensor.data)
    for (owner, _), group in groups.items():
        if len(group) == 1:
            dist.broadcast(group[0], src=owner)
            continue
        flat = _flatten_dense_tensors(group)
        dist.broadcast(flat, src=owner)
        if owner != dist.get_rank():
            for tensor, value in zip(group, _unflatten_dense_tensors(flat, group)):
                tensor.copy_(value)


class FullyShardedParallel:
    """FSDP2 (train/fsdp.py): decoder layers sharded across processes, each process's chunks stepped as plain
    tensors (`fsdp.LocalShards`), checkpoints gathered whole."""

    name = "fsdp"
    shards_weights = True

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.shards = fsdp.LocalShards([], ctx)

    def wrap(self, model: nn.Module, head_loss: FusedHeadLoss) -> MicroBatchLoss:
        """Shard in place: call after the checkpoint's adapter weights were loaded (checkpoints hold whole tensors)."""
        fsdp.shard_model(model, head_loss, self.ctx)
        return _local_loss(model, head_loss)

    def forwards(self, batches: list[Batch]) -> list[tuple[Batch, float]]:
        return fsdp.even_forwards(batches, self.ctx)

    def optimizer(self, params: list[nn.Parameter], name: str, **hyper: Any) -> torch.optim.Optimizer:
        self.shards = fsdp.LocalShards(params, self.ctx)
        if name != "adamw":
            self.shards.check_8bit_layout()
        return build_optimizer(self.shards.tensors, name, self.shards.min_8bit_size, **hyper)

    def finish_gradients(self) -> None:
        self.shards.take_gradients()  # FSDP reduce-scattered the sharded units; whole ones are summed here

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        return self.shards.clip_grad_norm_(max_norm)

    def finish_step(self) -> None:
        """Each chunk is a view of the storage FSDP gathers from: the step is in the weights already."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return self.shards.full_optimizer_state(optimizer)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        self.shards.load_full_optimizer_state(optimizer, state)
        _restore_foreach(optimizer)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        return fsdp.full_trainable_state(model)
