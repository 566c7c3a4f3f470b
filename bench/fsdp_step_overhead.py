"""Host time of the optimizer's part of an FSDP step: the gradient norm, the clip and AdamW, per way of stepping.

FSDP shards each trained weight as a DTensor. Stepping the DTensors (what medtune did until 2026-12-01: torch AdamW
without multi-tensor kernels, which cannot mix DTensors with the whole tensors FSDP leaves, and torch's norm and
clip over the DTensor gradients) dispatches every operation in Python, per tensor. `LocalShards` (train/fsdp.py)
steps each process's chunks as plain tensors instead: multi-tensor AdamW, one all-reduce for the norm. The time of
this part is mostly per tensor, not per value, so the bench keeps Qwen3-8B v2's 506 trained tensors (LoRA r=64 on
seven projections of 36 layers, embed_tokens and lm_head) and divides their dimensions by --shrink, leaving the
per-tensor host cost that a GPU, which runs the arithmetic itself quickly, pays in full:
    PYTHONPATH=src python bench/fsdp_step_overhead.py --out bench/results/DATE-fsdp-step/results.jsonl
Two gloo processes on the CPU; each way is timed over --steps steps after two untimed ones, on the same gradients.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from medtune.model.memory import ModelShape
from medtune.model.qwen3_sizes import qwen3_config
from medtune.train.distributed import DistContext
from medtune.train.fsdp import LocalShards
from medtune.train.parallel import build_optimizer


def trained_shapes(size: str, rank: int, shrink: int) -> list[tuple[int, int]]:
    """The (rows, columns) of every tensor v2 trains on a Qwen3 size, each dimension but the LoRA rank / `shrink`."""
    shape = ModelShape.from_config(qwen3_config(size))
    lora = [(rank, i // shrink) for i, _ in shape.projections().values()]
    lora += [(o // shrink, rank) for _, o in shape.projections().values()]
    embeddings = [(shape.vocab // shrink, shape.hidden // shrink)] * 2
    return lora * shape.layers + embeddings


def step_dtensors(params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    """The way before LocalShards: norm and clip over the DTensor gradients, AdamW over the DTensors."""
    total = get_total_norm([p.grad for p in params]).full_tensor()
    clip_grads_with_norm_(params, 1.0, total)
    optimizer.step()


def worker(rank: int, init_file: str, args: argparse.Namespace, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (2,))
    generator = torch.Generator().manual_seed(0)
    shapes = trained_shapes(args.size, 64, args.shrink)
    weights = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [torch.randn(shape, generator=generator) for shape in shapes]

    def sharded() -> list[nn.Parameter]:
        return [nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])) for w in weights]

    def give_gradients(params: list[nn.Parameter]) -> None:
        for param, grad in zip(params, grads):
            param.grad = distribute_tensor(grad, mesh, [Shard(0)])

    timings: dict[str, float] = {}
    params = sharded()
    optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    timings["dtensors"] = timed(args.steps, lambda: give_gradients(params), lambda: step_dtensors(params, optimizer))

    params = sharded()
    shards = LocalShards(params, DistContext(rank=rank, world_size=2))
    local = build_optimizer(shards.tensors, "adamw", shards.min_8bit_size, lr=1e-4)

    def step_local() -> None:
        shards.take_gradients()
        shards.clip_grad_norm_(1.0)
        local.step()

    timings["local_shards"] = timed(args.steps, lambda: give_gradients(params), step_local)
    if rank == 0:
        record = {
            "size": args.size,
            "version": "v2",
            "tensors": len(shapes),
            "shrink": args.shrink,
            "processes": 2,
            "steps": args.steps,
            **{f"{way}_ms": round(ms, 1) for way, ms in timings.items()},
            "torch": torch.__version__,
        }
        print(json.dumps(record), flush=True)
        with open(results, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
    dist.barrier()
    dist.destroy_process_group()


def timed(steps: int, prepare, step) -> float:
    """Milliseconds per step of `step` (gradients given by `prepare` outside the timing), after two untimed."""
    elapsed = 0.0
    for index in range(steps + 2):
        prepare()
        dist.barrier()
        start = time.perf_counter()
        step()
        dist.barrier()
        if index >= 2:
            elapsed += time.perf_counter() - start
    return elapsed / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="8b")
    parser.add_argument("--shrink", type=int, default=64, help="divide every dimension but the LoRA rank by this")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True, help="results.jsonl to append to")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        torch.multiprocessing.spawn(worker, args=(f"{folder}/rendezvous", args, str(args.out)), nprocs=2)


if __name__ == "__main__":
    main()
