"""Data parallelism under `torchrun` / `accelerate launch`: every process trains a shard of each optimizer step.

The global batch (`per_device_batch_size x gradient_accumulation_steps` of the config) stays the same whatever
the number of processes, so a run resumes on more or fewer GPUs with the same math. Each process divides its
loss sums by the token count of the *whole* step (known to all: every process builds the step's sample list)
and gradients are summed across processes once per step, so the update equals one process's on that batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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

    def shard(self, items: list[T]) -> list[T]:
        """This process's share of a list, round-robin so long and short samples spread evenly."""
        return items[self.rank :: self.world_size]

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

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every trainable gradient across processes in one flat buffer per dtype (one collective each)."""
        if not self.enabled:
            return
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)  # a shard may not touch a parameter; others still send theirs
            by_dtype.setdefault(param.grad.dtype, []).append(param)
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in group:
                p.grad.copy_(flat[offset : offset + p.grad.numel()].view_as(p.grad))
                offset += p.grad.numel()

    def batch_layout(self, per_device_batch_size: int, gradient_accumulation_steps: int) -> dict[str, int]:
        """How one optimizer step's samples divide over processes and micro-batches (without packing; packing fills
        rows of up to speed.packed_row_tokens tokens instead, so it may need fewer or more)."""
        global_batch = per_device_batch_size * gradient_accumulation_steps
        per_process = -(-global_batch // self.world_size)
        return {"global_batch": global_batch, "processes": self.world_size, "per_device_batch_size": per_device_batch_size,
                "samples_per_process": per_process, "micro_batches_per_process": -(-per_process // per_device_batch_size)}

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


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
