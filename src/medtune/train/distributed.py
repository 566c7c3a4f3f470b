"""Data parallelism under `torchrun` / `accelerate launch`: every process trains a shard of each optimizer step.

The global batch (`per_device_batch_size x gradient_accumulation_steps` of the config) stays the same whatever
the number of processes, so a run resumes on more or fewer GPUs with the same math. Each process divides its
loss sums by the token count of the *whole* step (known to all: every process builds the step's sample list)
and gradients are *summed* across processes once per step, so the update equals one process's on that batch.

The sum is torch's DistributedDataParallel with a summing communication hook (its default hook averages): it
all-reduces gradients in buckets while the backward pass of the step's last micro-batch still runs, and not at
all in the earlier ones (`no_sync`). Several machines are torchrun's job (`--nnodes`, a rendezvous endpoint);
nothing here depends on how many there are.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medtune.config import ConfigError
from medtune.data.batching import process_shares
from medtune.train.loss import FusedHeadLoss, LossSums, causal_lm_loss_sums

T = TypeVar("T", bound=Sized)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share of a step's samples (or of the validation set): tokens balanced across processes,
        so no process waits for a longer share (data/batching.py)."""
        if not self.enabled:
            return list(items)
        return [items[i] for i in process_shares([len(item) for item in items], self.world_size)[self.rank]]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum across processes (a no-op in a single process)."""
        return self._all_reduce(tensor, dist.ReduceOp.SUM)

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place maximum across processes (a no-op in a single process)."""
        return self._all_reduce(tensor, dist.ReduceOp.MAX)

    def _all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=op)
        return tensor

    def batch_layout(self, per_device_batch_size: int, gradient_accumulation_steps: int) -> dict[str, int]:
        """How one optimizer step's samples divide over processes and micro-batches (without packing; packing fills
        rows of up to speed.packed_row_tokens tokens instead, so it may need fewer or more)."""
        global_batch = per_device_batch_size * gradient_accumulation_steps
        per_process = -(-global_batch // self.world_size)
        return {
            "global_batch": global_batch,
            "processes": self.world_size,
            "per_device_batch_size": per_device_batch_size,
            "samples_per_process": per_process,
            "micro_batches_per_process": -(-per_process // per_device_batch_size),
        }

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


class _LossModule(nn.Module):
    """The micro-batch loss as a module, for DDP to wrap: the loss runs the backbone and the fused head
    (train/loss.py) rather than the model's forward, and DDP arms its gradient reduction in its own forward."""

    def __init__(self, model: nn.Module, head_loss: FusedHeadLoss) -> None:
        super().__init__()
        self.model = model
        self.head_loss = head_loss  # the head's weights are the model's: DDP lists each parameter once

    def forward(self, batch: dict[str, Any]) -> LossSums:
        return causal_lm_loss_sums(self.model, batch, self.head_loss)


def _sum_hook(group, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations, which this module's are
    """All-reduce a bucket of gradients (dist.GradBucket) as a plain SUM; DDP's own hook divides by the process
    count first. Returns a Future of the summed bucket."""
    return dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future().then(lambda fut: fut.value()[0])


class DataParallelLoss:
    """The micro-batch loss inside torch's DDP, with the gradient reduction its backward pass owes the step.

    DDP sums gradients across processes in the backward pass of the step's last micro-batch (`last=True`) and
    accumulates locally in the others (`no_sync`). Processes may run different numbers of micro-batches
    (packing), since only the last one communicates; each must run at least one (`check_global_batch`).
    """

    def __init__(self, model: nn.Module, head_loss: FusedHeadLoss) -> None:
        loss = _LossModule(model, head_loss)
        frozen = [name for name, p in loss.named_parameters() if not p.requires_grad]
        buffers = [name for name, _ in loss.named_buffers()]
        # DDP then neither broadcasts the frozen (4-bit) base nor syncs buffers on every forward; at construction
        # it broadcasts rank 0's trainable weights, so every process starts from the same LoRA init.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(loss, frozen + buffers)
        # device_ids=None: the recipe moves each batch to the device, so DDP's input copying (and a CPU-only
        # difference from the GPU path) is left out; gradient_as_bucket_view: no second copy of the gradients.
        self.ddp = DistributedDataParallel(loss, device_ids=None, gradient_as_bucket_view=True)
        self.ddp.register_comm_hook(None, _sum_hook)

    def __call__(self, batch: dict[str, Any], last: bool) -> LossSums:
        with contextlib.nullcontext() if last else self.ddp.no_sync():  # no_sync needs only the forward inside
            return self.ddp(batch)


def check_global_batch(samples_per_step: int, ctx: DistContext) -> None:
    """Every process needs a sample of each step: its backward pass joins the step's gradient reduction. A
    ConfigError (one line, exit 3), since the config's batch keys or the process count must change."""
    if samples_per_step < ctx.world_size:
        raise ConfigError(
            f"train.per_device_batch_size x train.gradient_accumulation_steps = {samples_per_step} samples per "
            f"optimizer step, fewer than the {ctx.world_size} processes: every process needs at least one sample "
            "per step; raise either, or launch fewer processes"
        )


def init_distributed() -> DistContext:
    """Join the process group that torchrun / accelerate launch describe in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistContext(dist.get_rank(), world_size, local_rank)
