"""Training speed of medtune's step next to the reference stack and unsloth, on the v1/v2 recipes.

    python bench/gpu_speed.py all --work /tmp/medtune-bench --out results/ [--tiny] [--stages ...]

runs every stage below in its own process and prints the table; each stage can also be run alone:

    prepare                      build Qwen3-1.7B from its shipped config with random weights (bf16 safetensors)
    check VERSION [VARIANT]      loss and gradients of (a) and (b) on one step, each against an fp32 reference
    reference VERSION            (a) the plain stack of the reference experiment, Trainer-style loop
    medtune VERSION [VARIANT..]  (b) FineTuneRecipe.train_step with configs/VERSION.yaml (+ SpeedConfig variants)
    unsloth VERSION              (c) unsloth on the same workload (import unsloth first, own process)
    head                         the fused lm_head + cross-entropy against the checkpointed chunks it replaced
    profile VERSION [VARIANT..]  one medtune step under torch.profiler: device busy time against wall time,
                                 kernels by kind
    multigpu VERSION [VARIANT]   medtune on one GPU or on `--nproc` GPUs (`--parallelism`), optionally each GPU
                                 capped at `--memory-cap`: tokens/s, per-rank peaks, status ok/oom, the losses of the
                                 timed steps
    memory VERSION [VARIANT]     one stack (`--stack`) under a per-process cap (`--memory-cap`): status ok/oom, peak,
                                 tokens/s; for medtune also the memory plan (`speed.memory_budget: auto`) and its
                                 prediction
    report                       the table from results.jsonl

`--memory-cap GIB` caps every stage's process (medtune, unsloth, reference alike) through
torch.cuda.set_per_process_memory_fraction before anything is allocated, as a GPU of that size would. A memory table
runs each stack under each cap in its own process: `memory:STACK:SIZE:VERSION:capGIB[:VARIANT]`, e.g.

    python bench/gpu_speed.py all --stages prepare:8b memory:medtune:8b:v1:cap24 memory:unsloth:8b:v1:cap24

`--size` picks the Qwen3 size that `prepare` builds (1.7b, 4b, 8b, 14b, 32b) and `--nproc N` runs the medtune
stages under torchrun on N GPUs (data parallel; the `fsdp` variant shards the decoder layers), e.g.

    python bench/gpu_speed.py all --size 8b --nproc 2 --stages prepare medtune:v2:auto,fsdp

Multi-GPU scaling against one GPU in the same call: `prepare:SIZE` builds a size, and
`multigpu:SIZE:VERSION:PARALLELISM[:capGIB][:VARIANT][:profile][:hostprofile][:compiled][:shared][:sharesN]`
(PARALLELISM: none = one process on one GPU, ddp, fsdp) runs one setting (`profile`: then one more step under
torch.profiler on every GPU: device idle time, communication not hidden behind compute, kernel time by kind;
`hostprofile`: one more step, or each share of it under `sharesN`, under cProfile: the host's own time by package
and by function; `compiled`: after one eager step, every decoder layer goes through `torch.compile(dynamic=True)`,
to measure whether fewer, fused launches relieve a host-bound step), e.g.

    python bench/gpu_speed.py all --nproc 2 \\
        --stages prepare:8b multigpu:8b:v2:none multigpu:8b:v2:none multigpu:8b:v2:ddp multigpu:8b:v2:fsdp

Two modifiers answer what one GPU can about several. `shared`: the `--nproc` processes all run on GPU 0 and talk
through gloo (which stages CUDA tensors through the host): the losses check the multi-process code on CUDA and each
process's peak is its own allocator's, as on its own GPU, but the speed means nothing. `sharesN` (with `none`):
each step's samples are split as N data-parallel processes would split them, and one GPU trains the shares one
after the other, each timed alone: the slowest share is the step time of N processes without communication, so
one GPU's step time over it is the data-parallel speed-up the work itself allows; with `zero1`, each share's
optimizer steps only the tensors its process would own. Every timed step (and share) records the host's pauses in
it: seconds in Python's garbage collector, and Triton kernels compiled; the report gives every setting run more
than once its spread across runs, runs in which Triton compiled left out.

Workload: the shipped medical data (delicate_medical_r1_val) rendered with the Qwen3 chat template through
medtune's encode_sample, the v1/v2 train split, 16 samples per optimizer step in medtune's sample order;
every stack trains on the same samples in the same order. Throughput counts non-pad input tokens. `--tiny`
swaps in medtune's tiny Qwen3 and short sequences so the whole script runs on a CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from medtune.model.qwen3_sizes import QWEN3_SIZES, qwen3_config  # imports no torch

# No torch/transformers import at module level: the unsloth stage must import unsloth before them.

REPO = Path(__file__).resolve().parents[1]
SAMPLES_PER_STEP = 16
H200_BF16_DENSE_FLOPS = 989.4e12  # datasheet peak, dense bf16 (H100/H200 SXM)
LORA_CHECK_STD = 0.02
STACKS = {"reference": "(a) reference stack", "medtune": "(b) medtune", "unsloth": "(c) unsloth"}

# (b) variants: the ladder from medtune's step before the speed work (PEFT's LoRA forward, rows of 8,192 tokens),
# then the levers added since; each pins what it measures, so a later change of defaults does not change it.
VARIANTS: dict[str, list[str]] = {
    "before": [
        "speed.packed_attention=mask",
        "speed.mixed_precision=none",
        "speed.fused_kernels=none",
        "speed.checkpoint_fraction=1.0",
        "speed.fused_lora=false",
        "speed.packed_row_tokens=null",
    ],
    "+varlen": [
        "speed.packed_attention=auto",
        "speed.mixed_precision=none",
        "speed.fused_kernels=none",
        "speed.checkpoint_fraction=1.0",
        "speed.fused_lora=false",
        "speed.packed_row_tokens=null",
    ],
    "+bf16": [
        "speed.packed_attention=auto",
        "speed.mixed_precision=auto",
        "speed.fused_kernels=none",
        "speed.checkpoint_fraction=1.0",
        "speed.fused_lora=false",
        "speed.packed_row_tokens=null",
    ],
    "+liger": [
        "speed.packed_attention=auto",
        "speed.mixed_precision=auto",
        "speed.fused_kernels=auto",
        "speed.checkpoint_fraction=1.0",
        "speed.fused_lora=false",
        "speed.packed_row_tokens=null",
    ],
    "auto": [],  # the defaults
    # rows of per_device_batch_size x max_length = 8,192 tokens (a step in two passes), as before packed_row_tokens
    "peft_lora": [
        "speed.fused_lora=false",
        "speed.packed_row_tokens=null",
        "speed.checkpoint_fraction=0.65",
    ],  # PEFT's own LoRA forward
    "fused": ["speed.fused_lora=true", "speed.packed_row_tokens=null", "speed.checkpoint_fraction=0.65"],
    "fused_ckpt50": ["speed.fused_lora=true", "speed.packed_row_tokens=null", "speed.checkpoint_fraction=0.5"],
    "fused_ckpt40": ["speed.fused_lora=true", "speed.packed_row_tokens=null", "speed.checkpoint_fraction=0.4"],
    "fused_ckpt0": ["speed.fused_lora=true", "speed.packed_row_tokens=null", "speed.checkpoint_fraction=0.0"],
    "fused_one_row": [
        "speed.fused_lora=true",
        "speed.packed_row_tokens=null",
        "speed.checkpoint_fraction=0.65",
        "train.per_device_batch_size=8",
        "train.gradient_accumulation_steps=2",
    ],
    # a step in one row of up to 16,384 tokens (speed.packed_row_tokens)
    "peft_row": ["speed.fused_lora=false", "speed.packed_row_tokens=16384", "speed.checkpoint_fraction=0.65"],
    "row_ckpt50": ["speed.fused_lora=true", "speed.packed_row_tokens=16384", "speed.checkpoint_fraction=0.5"],
    "row_ckpt65": ["speed.fused_lora=true", "speed.packed_row_tokens=16384", "speed.checkpoint_fraction=0.65"],
    "row_ckpt75": ["speed.fused_lora=true", "speed.packed_row_tokens=16384", "speed.checkpoint_fraction=0.75"],
    "row_ckpt85": ["speed.fused_lora=true", "speed.packed_row_tokens=16384", "speed.checkpoint_fraction=0.85"],
    "row_ckpt100": ["speed.fused_lora=true", "speed.packed_row_tokens=16384", "speed.checkpoint_fraction=1.0"],
    "row_ckpt100_offload": [
        "speed.fused_lora=true",
        "speed.packed_row_tokens=16384",
        "speed.checkpoint_fraction=1.0",
        "speed.offload_activations=true",
    ],
    # the memory levers, for calibrating the memory model (model/memory.py): recomputed share and row size
    "row_ckpt0": ["speed.fused_lora=true", "speed.packed_row_tokens=16384", "speed.checkpoint_fraction=0.0"],
    "row8k_ckpt50": ["speed.fused_lora=true", "speed.packed_row_tokens=8192", "speed.checkpoint_fraction=0.5"],
    "row8k_ckpt100": ["speed.fused_lora=true", "speed.packed_row_tokens=8192", "speed.checkpoint_fraction=1.0"],
    "row4k_ckpt100": ["speed.fused_lora=true", "speed.packed_row_tokens=4096", "speed.checkpoint_fraction=1.0"],
    "row2k_ckpt100": ["speed.fused_lora=true", "speed.packed_row_tokens=2048", "speed.checkpoint_fraction=1.0"],
    "per_sample": ["speed.packed_attention=per_sample", "speed.fused_lora=false", "speed.packed_row_tokens=null"],
    "zero1": ["train.shard_optimizer=true"],  # with ddp: each process steps its own trained tensors (ZeRO-1)
    "no_liger": ["speed.fused_kernels=none"],  # with `compiled`: inductor fuses what Liger's kernels would
    "torch_adamw": ["train.optimizer=adamw"],  # torch's multi-tensor AdamW (32-bit states) instead of paged 8-bit
    "fsdp": ["train.parallelism=fsdp"],  # with --nproc > 1; torch AdamW (auto picks it under FSDP)
}

BUILT_IN_BF16 = {"14b", "32b"}  # drawn in bf16: in fp32 they would not fit one GPU (smaller sizes as in earlier calls)
PARALLELISMS = ("none", "ddp", "fsdp")  # of the multigpu stage: one process on one GPU, or under torchrun


# ---- workload ----------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    found = {}
    for name in (
        "torch",
        "transformers",
        "peft",
        "bitsandbytes",
        "accelerate",
        "liger_kernel",
        "unsloth",
        "unsloth_zoo",
        "triton",
    ):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def run_config(version: str, args: argparse.Namespace, *overrides: str):
    """configs/VERSION.yaml pointed at the random-weight model; `--tiny` shortens sequences for CPU."""
    from medtune.config import load_config

    base = [
        f"model.name_or_path={model_dir(args)}",
        f"output_dir={Path(args.work) / 'runs'}",
        f"run_name={version}",
        "train.eval_steps=null",
        "train.report_to=[]",
    ]
    if args.tiny:
        base.append("data.max_length=512")  # drops the samples whose answer would be cut
    return load_config(REPO / "configs" / f"{version}.yaml", [*base, *overrides])


def model_dir(args: argparse.Namespace) -> Path:
    return Path(args.work) / ("qwen3-tiny-random" if args.tiny else f"qwen3-{args.size}-random")


def step_items(train_set, step: int, seed: int) -> list:
    """The samples of optimizer step `step`, in medtune's order; the same list for every stack."""
    from medtune.data.batching import step_positions

    return [
        train_set.encode_at(epoch, index)[0]
        for epoch, index in step_positions(step * SAMPLES_PER_STEP, SAMPLES_PER_STEP, len(train_set), seed)
    ]


def workload(cfg) -> tuple[Any, Any]:
    """(tokenizer, training set) exactly as medtune's recipe prepares them."""
    from medtune.data.prepare import prepare_data
    from medtune.model.load import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    return tokenizer, prepare_data(cfg, tokenizer).train


def compute_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype():
    """bf16 on CUDA (the reference experiment's), fp32 on CPU: the dtype medtune's `compute_dtype: auto` picks."""
    import torch

    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def model_flops(config, items: list, lora_r: int, lora_modules: list[str], head_trained: bool) -> float:
    """Model FLOPs of one optimizer step (no recomputation, no padding): what MFU counts, the same for every stack."""
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    q_out, kv_out = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    shapes = {
        "q_proj": (hidden, q_out),
        "k_proj": (hidden, kv_out),
        "v_proj": (hidden, kv_out),
        "o_proj": (q_out, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    body_params = layers * sum(i * o for i, o in shapes.values())
    lora_params = layers * lora_r * sum(i + o for name, (i, o) in shapes.items() if name in lora_modules)
    tokens = sum(len(e) for e in items)
    trained = sum(e.trained_tokens() for e in items)
    flops = 4 * body_params * tokens  # forward + input gradients of the frozen base
    flops += 6 * lora_params * tokens  # forward + input and weight gradients of the adapters
    flops += 3 * layers * sum(2 * len(e) ** 2 * q_out for e in items)  # causal attention, forward + backward
    flops += (6 if head_trained else 4) * config.vocab_size * hidden * trained
    return float(flops)


def emit(args: argparse.Namespace, record: dict[str, Any]) -> None:
    record = {"date": datetime.date.today().isoformat(), "device": device_name(), "tiny": args.tiny, **record}
    with open(Path(args.out) / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(
        json.dumps({k: v for k, v in record.items() if k not in ("step_seconds", "step_tokens", "versions")}),
        flush=True,
    )


# ---- timing ------------------------------------------------------------------------------------
class HostPauses:
    """The host's pauses inside each timed step (or share of one): seconds in Python's garbage collector by
    generation, kernels Triton compiled (new entries in its cache folder), and, on CUDA, segments the caching
    allocator took from and gave back to the driver (cudaMalloc and cudaFree; a free synchronises the device). Under
    data parallelism a pause in one process stalls every other at the next gradient reduction."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self.triton_cache = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
        self.entries = self.cache_entries()
        self.segments = self.cuda_segments()
        self.gc_seconds = [0.0, 0.0, 0.0]
        self.gc_started = 0.0
        gc.callbacks.append(self.on_gc)

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.gc_started = time.perf_counter()
        else:
            self.gc_seconds[info["generation"]] += time.perf_counter() - self.gc_started

    def cache_entries(self) -> int:
        return len(os.listdir(self.triton_cache)) if self.triton_cache.is_dir() else 0

    def cuda_segments(self) -> tuple[int, int]:
        import torch

        if not self.cuda:
            return 0, 0
        stats = torch.cuda.memory_stats()
        return stats.get("segment.all.allocated", 0), stats.get("segment.all.freed", 0)

    def take(self) -> dict[str, Any]:
        """The pauses since the last call."""
        entries, segments = self.cache_entries(), self.cuda_segments()
        taken = {
            "gc_s": [round(s, 4) for s in self.gc_seconds],
            "triton_compiled": entries - self.entries,
            "cuda_segments_allocated": segments[0] - self.segments[0],
            "cuda_segments_freed": segments[1] - self.segments[1],
        }
        self.gc_seconds, self.entries, self.segments = [0.0, 0.0, 0.0], entries, segments
        return taken

    def close(self) -> None:
        gc.callbacks.remove(self.on_gc)


def timed_steps(
    run_step, train_set, seed: int, warmup: int, steps: int, pauses: HostPauses | None = None
) -> dict[str, Any]:
    """Warm up, then time each step between device synchronisations; peak memory and host pauses over the timed
    steps."""
    import torch

    cuda = torch.cuda.is_available()
    for step in range(warmup):
        run_step(step_items(train_set, step, seed))
    before_timed = None
    if cuda:
        torch.cuda.synchronize()
        before_timed = torch.cuda.max_memory_allocated() / 2**30  # loading and warm-up included
        torch.cuda.reset_peak_memory_stats()
    probe = pauses or HostPauses()
    probe.take()
    seconds, tokens, all_items, step_pauses = [], [], [], []
    for step in range(warmup, warmup + steps):
        items = step_items(train_set, step, seed)
        started = time.perf_counter()
        run_step(items)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        step_pauses.append(probe.take())
        tokens.append(sum(len(e) for e in items))
        all_items += items
    if pauses is None:
        probe.close()
    result = {
        "warmup_steps": warmup,
        "timed_steps": steps,
        "step_seconds": seconds,
        "step_tokens": tokens,
        "host_pauses": step_pauses,
        "tokens_per_s": sum(tokens) / sum(seconds),
        "steps_per_s": steps / sum(seconds),
        "items": all_items,
    }
    if cuda:
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        result["peak_before_timed_gib"] = before_timed
    return result


def speed_record(
    args, stack: str, version: str, variant: str, timing: dict[str, Any], cfg, config, **extra
) -> dict[str, Any]:
    items = timing.pop("items")
    flops = model_flops(config, items, cfg.lora.r, cfg.lora.target_modules, "lm_head" in cfg.lora.modules_to_save)
    seconds = sum(timing["step_seconds"])
    gpus = int(os.environ.get("WORLD_SIZE", "1"))
    mfu = flops / seconds / (H200_BF16_DENSE_FLOPS * gpus) if compute_device().type == "cuda" else None
    return {
        "kind": "speed",
        "stack": stack,
        "version": version,
        "variant": variant,
        "size": args.size,
        "processes": gpus,
        **timing,
        "model_tflops_per_step": flops / timing["timed_steps"] / 1e12,
        "mfu": mfu,
        "versions": versions(),
        **extra,
    }


def cap_memory(args: argparse.Namespace, device_index: int = 0) -> bool:
    """`--memory-cap`: this process may reserve at most that much GPU memory (call before anything is allocated).
    Returns whether a cap was set: on a CPU it is ignored (and recorded so)."""
    import torch

    if not args.memory_cap or not torch.cuda.is_available():
        return False
    total = torch.cuda.get_device_properties(device_index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap * 2**30 / total), device_index)
    return True


# ---- (a) the reference stack -------------------------------------------------------------------
def nf4_model(args: argparse.Namespace, device) -> Any:
    """The bench's model as the reference stack loads it: transformers + bitsandbytes NF4, double quant, SDPA."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )
    return AutoModelForCausalLM.from_pretrained(
        model_dir(args),
        quantization_config=quant,
        dtype=compute_dtype(),
        attn_implementation="sdpa",
        device_map={"": 0 if device.type == "cuda" else "cpu"},
    )


def reference_model(cfg, args: argparse.Namespace, dropout: float):
    """transformers + PEFT + bitsandbytes NF4 (double quant, bf16 compute), prepare_model_for_kbit_training with
    gradient checkpointing, LoRA on the configured projections (+ modules_to_save, tied as in v2)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    device = compute_device()
    model = nf4_model(args, device)
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=dropout,
        target_modules=list(cfg.lora.target_modules),
        modules_to_save=list(cfg.lora.modules_to_save) or None,
        ensure_weight_tying=bool(cfg.lora.modules_to_save),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def padded_micro_batches(items: list, batch_size: int, pad_id: int, device) -> list[dict[str, Any]]:
    """Batches of `batch_size` right-padded to their longest sample, labels -100 on pads (DataCollatorForSeq2Seq)."""
    import torch

    batches = []
    for start in range(0, len(items), batch_size):
        group = items[start : start + batch_size]
        width = max(len(e) for e in group)
        pads = [width - len(e) for e in group]
        batches.append(
            {
                "input_ids": torch.tensor([e.input_ids + [pad_id] * p for e, p in zip(group, pads)], device=device),
                "attention_mask": torch.tensor([[1] * len(e) + [0] * p for e, p in zip(group, pads)], device=device),
                "labels": torch.tensor([e.labels + [-100] * p for e, p in zip(group, pads)], device=device),
            }
        )
    return batches


def autocast_context():
    import torch

    if torch.cuda.is_available():
        return torch.autocast("cuda", dtype=torch.bfloat16)  # Trainer's bf16=True
    return contextlib.nullcontext()


def trainer_style_backward(model, items: list, batch_size: int, pad_id: int) -> float:
    """One optimizer step's forward/backward as transformers' Trainer runs it: the model's own loss, summed over the
    step's micro-batches and divided by the step's trained-token count (num_items_in_batch)."""
    import torch

    device = compute_device()  # not a parameter's: unsloth keeps the trained embeddings' master copy off the GPU
    trained = sum(e.trained_tokens() for e in items)
    loss_total = 0.0
    for batch in padded_micro_batches(items, batch_size, pad_id, device):
        with autocast_context():
            loss = model(**batch, num_items_in_batch=torch.tensor(trained, device=device)).loss
        loss.backward()
        loss_total += loss.detach()
    return float(loss_total)


def optimizer_for(params, cfg):
    import torch

    if torch.cuda.is_available():
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(
            params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay)


def loop_step(model, cfg, tokenizer):
    """(a) and (c): one step of the same Trainer-style loop around their own model."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer_for(params, cfg)

    def run_step(items: list) -> None:
        trainer_style_backward(model, items, cfg.train.per_device_batch_size, tokenizer.pad_token_id)
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    return run_step


def loop_stack(args: argparse.Namespace, stack: str, model, cfg, tokenizer, train_set, config) -> None:
    timing = timed_steps(loop_step(model, cfg, tokenizer), train_set, cfg.train.seed, args.warmup, args.steps)
    emit(args, speed_record(args, stack, args.version, "default", timing, cfg, config))


def reference_stack(args: argparse.Namespace):
    """(model, cfg, tokenizer, training set, model config) of (a)."""
    cfg = run_config(args.version, args)
    tokenizer, train_set = workload(cfg)
    model = reference_model(cfg, args, cfg.lora.dropout)
    return model, cfg, tokenizer, train_set, model.get_base_model().config


def stage_reference(args: argparse.Namespace) -> None:
    cap_memory(args)
    model, cfg, tokenizer, train_set, config = reference_stack(args)
    loop_stack(args, "reference", model, cfg, tokenizer, train_set, config)


# ---- (c) unsloth -------------------------------------------------------------------------------
def unsloth_stack(args: argparse.Namespace):
    """(model, cfg, tokenizer, training set, model config) of (c); the caller imported unsloth first."""
    import torch
    from unsloth import FastLanguageModel

    cfg = run_config(args.version, args)
    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(model_dir(args)), max_seq_length=cfg.data.max_length, dtype=torch.bfloat16, load_in_4bit=True
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        modules_to_save=list(cfg.lora.modules_to_save) or None,
        use_gradient_checkpointing="unsloth",
        bias="none",
        random_state=cfg.train.seed,
    )
    tokenizer, train_set = workload(cfg)
    return model, cfg, tokenizer, train_set, model.config


def stage_unsloth(args: argparse.Namespace) -> None:
    import unsloth  # noqa: F401  (first: it patches transformers, peft and bitsandbytes on import)

    cap_memory(args)
    loop_stack(args, "unsloth", *unsloth_stack(args))


# ---- (b) medtune -------------------------------------------------------------------------------
def medtune_recipe(version: str, args: argparse.Namespace, *overrides: str):
    from medtune.train.recipe import FineTuneRecipe

    recipe = FineTuneRecipe(run_config(version, args, *overrides), overwrite=True)
    recipe.setup()
    return recipe


def stage_medtune(args: argparse.Namespace) -> None:
    """Each variant builds a fresh recipe in this process, in the order given (Liger's RoPE patch is process-wide).

    Under torchrun (`--nproc`) every process runs the same steps, each its share of them; rank 0 records the step
    time (the same on all: the gradients are reduced every step) and the largest peak memory of any GPU.
    """

    import torch

    cap_memory(args)
    for variant in args.variants or ["auto"]:
        started = time.perf_counter()
        recipe = medtune_recipe(args.version, args, *VARIANTS[variant])
        setup_s = time.perf_counter() - started
        timing = timed_steps(recipe.train_step, recipe.train_set, recipe.cfg.train.seed, args.warmup, args.steps)
        if recipe.dist.enabled and "peak_gib" in timing:
            for key in ("peak_gib", "peak_reserved_gib"):
                timing[key] = float(recipe.dist.max_(torch.tensor(timing[key], device=recipe.device)))
        if recipe.dist.is_main:
            emit(
                args,
                speed_record(
                    args,
                    "medtune",
                    args.version,
                    variant,
                    timing,
                    recipe.cfg,
                    recipe.model.get_base_model().config,
                    plan=recipe.speed_plan.as_dict(),
                    setup_s=setup_s,
                    overrides=VARIANTS[variant],
                ),
            )
        recipe.cleanup()
        del recipe
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def compile_decoder_layers(recipe) -> None:
    """One eager step first (it fills the 4-bit layers' cached block scales, a side effect torch.compile cannot
    trace), then each decoder layer through torch.compile; dynamic shapes, as the packed rows' lengths vary."""
    import torch

    recipe.train_step(step_items(recipe.train_set, 0, recipe.cfg.train.seed))
    layers = recipe.model.get_base_model().model.layers
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(layers))
    for layer in layers:
        layer.compile(dynamic=True)


def stage_multigpu(args: argparse.Namespace) -> None:
    """One setting on one GPU (`--parallelism none`) or under torchrun (`ddp`, `fsdp`), each GPU optionally capped at
    `--memory-cap` for the whole process (loading included) through torch's per-process memory fraction.

    Rank 0 records tokens/s of the whole step, every rank's peak and the loss of each timed step (the same for any
    process count: the step's math does not depend on it). A rank that runs out of memory records `status: oom`
    with its own peak and ends the launch (torchrun stops the other ranks, which would wait in a collective).
    """
    import torch

    variant = args.variants[0] if args.variants else "auto"
    if args.shared_gpu:
        share_one_gpu()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
        cap_memory(args, local_rank)
    record = {
        "kind": "multigpu",
        "version": args.version,
        "variant": variant,
        "size": args.size,
        "parallelism": args.parallelism,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "cap_gib": args.memory_cap,
        "overrides": VARIANTS[variant],
        "shared_gpu": args.shared_gpu,
        "simulated_processes": args.simulate_processes,
        "compiled_layers": args.compile_layers,
    }
    parallelism = ["train.parallelism=fsdp"] if args.parallelism == "fsdp" else []
    losses: list[float] = []
    try:
        started = time.perf_counter()
        recipe = medtune_recipe(args.version, args, *VARIANTS[variant], *parallelism)
        setup_s = time.perf_counter() - started
        if args.compile_layers:
            compile_decoder_layers(recipe)

        share_seconds: list[list[float]] = []
        share_pauses: list[list[dict[str, Any]]] = []
        pauses = HostPauses()

        set_share = (
            owned_tensors_only(recipe, args.simulate_processes)
            if args.simulate_processes and recipe.cfg.train.shard_optimizer
            else None
        )

        def run_step(items: list) -> None:
            if args.simulate_processes:
                seconds, paused = shares_one_after_another(
                    recipe.train_step, items, args.simulate_processes, pauses, set_share
                )
                share_seconds.append(seconds)
                share_pauses.append(paused)
                return
            loss, tokens = recipe.window.loss, recipe.window.tokens
            recipe.train_step(items)
            losses.append((recipe.window.loss - loss) / (recipe.window.tokens - tokens))

        timing = timed_steps(run_step, recipe.train_set, recipe.cfg.train.seed, args.warmup, args.steps, pauses)
        pauses.close()
        if args.simulate_processes:
            timed = share_seconds[args.warmup :]
            timing["share_seconds"] = timed
            timing["share_pauses"] = share_pauses[args.warmup :]
            timing["simulated_tokens_per_s"] = sum(timing["step_tokens"]) / sum(max(step) for step in timed)
    except (
        torch.OutOfMemoryError,
        RuntimeError,
    ) as error:  # NCCL reports its own allocations' failures as RuntimeError
        if not isinstance(error, torch.OutOfMemoryError) and "out of memory" not in str(error):
            raise
        peak = torch.cuda.max_memory_allocated() / 2**30
        emit(
            args,
            {
                **record,
                "status": "oom",
                "rank": rank,
                "peak_gib": {str(rank): peak},
                "message": str(error).splitlines()[0],
            },
        )
        os._exit(3)  # not a clean shutdown: the other ranks wait in a collective that will never come
    peaks = {key: timing.pop(key, None) for key in ("peak_gib", "peak_reserved_gib", "peak_before_timed_gib")}
    if args.profile:  # after the timed steps, so their figures are the same with or without it
        items = step_items(recipe.train_set, args.warmup + args.steps, recipe.cfg.train.seed)
        summary, prof = profiled(functools.partial(recipe.train_step, items))
        table = prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total")
        name = f"profile-multigpu-{args.size}-{args.version}-{args.parallelism}-{variant}-rank{rank}.txt"
        (Path(args.out) / name).write_text(table, encoding="utf-8")
        peaks["profile"] = summary
        if args.simulate_processes:  # and each share of the same step, as a data-parallel process would train it
            from medtune.data.batching import process_shares

            shares = process_shares([len(item) for item in items], args.simulate_processes)
            peaks["profile_shares"] = [
                profiled(functools.partial(recipe.train_step, [items[i] for i in share]))[0] for share in shares
            ]
    if args.host_profile:  # one more step (each share of it under sharesN) under cProfile: the host's time
        from medtune.data.batching import process_shares

        items = step_items(recipe.train_set, args.warmup + args.steps + 1, recipe.cfg.train.seed)
        runs = (
            [
                [items[i] for i in share]
                for share in process_shares([len(item) for item in items], args.simulate_processes)
            ]
            if args.simulate_processes
            else [items]
        )
        peaks["host_profile"] = []
        for index, run in enumerate(runs):
            summary, text = host_profiled(functools.partial(recipe.train_step, run))
            shares = f"-shares{args.simulate_processes}" if args.simulate_processes else ""
            name = f"hostprofile-{args.size}-{args.version}-{args.parallelism}-{variant}{shares}-rank{rank}-{index}.txt"
            (Path(args.out) / name).write_text(text, encoding="utf-8")
            peaks["host_profile"].append(summary)
    every_rank = [peaks]
    if recipe.dist.enabled:
        every_rank = [None] * recipe.dist.world_size
        torch.distributed.all_gather_object(every_rank, peaks)
    if recipe.dist.is_main:
        config = recipe.model.get_base_model().config
        per_rank = {key: {str(r): ranks[key] for r, ranks in enumerate(every_rank)} for key in peaks}
        emit(
            args,
            {
                **speed_record(args, "medtune", args.version, variant, timing, recipe.cfg, config),
                **record,
                "status": "ok",
                **per_rank,
                "losses": losses[args.warmup :],  # none with simulated shares: each share is its own step
                "setup_s": setup_s,
                "optimizer": recipe.optimizer_name,
                "plan": recipe.speed_plan.as_dict(),
            },
        )
    recipe.cleanup()


def share_one_gpu() -> None:
    """`shared`: every process on GPU 0, joined through gloo before the recipe would pick NCCL (which refuses two
    processes on one GPU)."""
    import torch

    os.environ["LOCAL_RANK"] = "0"
    if torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.cuda.set_device(0)
        torch.distributed.init_process_group("gloo")


def shares_one_after_another(
    train_step: Callable[[list], None],
    items: list,
    processes: int,
    pauses: HostPauses,
    set_share: Callable[[int], None] | None = None,
) -> tuple[list[float], list[dict[str, Any]]]:
    """`sharesN`: train each of the step's `processes` data-parallel shares as its own step, timed alone, with the
    host's pauses in each. `set_share` is told which process each share stands for."""
    import torch

    from medtune.data.batching import process_shares

    seconds, paused = [], []
    for process, share in enumerate(process_shares([len(item) for item in items], processes)):
        if set_share:
            set_share(process)
        pauses.take()
        started = time.perf_counter()
        train_step([items[i] for i in share])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        paused.append(pauses.take())
    return seconds, paused


def owned_tensors_only(recipe, processes: int) -> Callable[[int], None]:
    """`sharesN` with `zero1` (train.shard_optimizer): each share's optimizer step updates only the trained tensors
    its process would own under DDP (`owners_by_size`, as `DataParallel` assigns them), so a share costs what a
    ZeRO-1 process's step does, less the broadcast of the stepped tensors. Returns the setter of the current share."""
    from medtune.train.parallel import owners_by_size

    params = recipe.trainable_params
    owners = owners_by_size([p.numel() for p in params], processes)
    current = 0

    def set_share(process: int) -> None:
        nonlocal current
        current = process

    def drop_unowned(optimizer, args, kwargs) -> None:
        for param, owner in zip(params, owners):
            if owner != current:
                param.grad = None  # optimizers skip tensors without a gradient (torch's and bitsandbytes' alike)

    recipe.optimizer.register_step_pre_hook(drop_unowned)
    return set_share


def stage_memory(args: argparse.Namespace) -> None:
    """One stack (`--stack`) under `--memory-cap`: loading, warm-up and timed steps all under the cap. An out-of-memory
    error anywhere is recorded as `status: oom` with the peak reached, not a failed stage. medtune runs its defaults
    (`speed.memory_budget: auto` plans for the capped device) and records the plan and its predicted peak."""
    if args.stack == "unsloth":
        import unsloth  # noqa: F401  (first: it patches transformers, peft and bitsandbytes on import)
    import torch

    variant = args.variants[0] if args.variants else "auto"
    capped = cap_memory(args)
    record: dict[str, Any] = {
        "kind": "memory",
        "stack": args.stack,
        "size": args.size,
        "version": args.version,
        "variant": variant,
        "cap_gib": args.memory_cap,
        "cap_applied": capped,
        **({} if capped or not args.memory_cap else {"note": "cap ignored: no GPU"}),
    }
    try:
        if args.stack == "medtune":
            recipe = medtune_recipe(args.version, args, *VARIANTS[variant])
            record.update(
                predicted_peak_gib=recipe.memory_plan.predicted_peak_gib,
                plan=recipe.memory_plan.as_dict(),
                speed=recipe.speed_plan.as_dict(),
            )
            run_step, train_set, cfg, config = (
                recipe.train_step,
                recipe.train_set,
                recipe.cfg,
                recipe.model.get_base_model().config,
            )
        else:
            model, cfg, tokenizer, train_set, config = (unsloth_stack if args.stack == "unsloth" else reference_stack)(
                args
            )
            run_step = loop_step(model, cfg, tokenizer)
        timing = timed_steps(run_step, train_set, cfg.train.seed, args.warmup, args.steps)
    except torch.OutOfMemoryError as error:
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        emit(
            args,
            {**record, "status": "oom", "peak_gib": peak, "tokens_per_s": None, "message": str(error).splitlines()[0]},
        )
        return
    except Exception as error:  # medtune's plan that cannot fit the cap stops before training: recorded, not a crash
        if type(error).__name__ != "MemoryBudgetError":
            raise
        emit(args, {**record, "status": "does not fit", "peak_gib": None, "tokens_per_s": None, "message": str(error)})
        return
    emit(
        args,
        {
            **speed_record(args, args.stack, args.version, variant, timing, cfg, config),
            **record,
            "status": "ok",
            "peak_gib": timing.get("peak_gib"),
            "peak_reserved_gib": timing.get("peak_reserved_gib"),
        },
    )


COMMUNICATION = "communication (NCCL)"
KERNEL_KINDS = [  # first match wins; lower-case substrings of kernel names
    (COMMUNICATION, ("nccl",)),
    ("matmul", ("gemm", "gemv", "cutlass", "nvjet", "xmma", "cublas")),
    ("nf4 dequantize", ("dequant",)),
    ("attention", ("flash", "fmha", "attention")),
    ("liger / triton", ("rms", "swiglu", "rope", "triton")),
    ("optimizer", ("optimizer", "adam")),
    ("dropout", ("dropout",)),
    ("memcpy / memset", ("memcpy", "memset")),
    ("reduce", ("reduce",)),
    ("element-wise", ("elementwise", "vectorized", "unrolled", "copy", "cast", "fill")),
]


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start, end) intervals in microseconds: time the device was busy."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return busy / 1e6


def profiled(step: Callable[[], None]) -> tuple[dict[str, Any], Any]:
    """Run `step` once under torch.profiler. Returns the wall time, the device's busy time (the union of kernel
    intervals: wall minus busy is time the device waited for the host or at a synchronisation), the part of it when
    only communication (NCCL) kernels ran, i.e. communication not hidden behind compute, kernel seconds and counts by
    kind, and the profiler (for its table)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        step()
        torch.cuda.synchronize() if cuda else None
        wall = time.perf_counter() - started
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    spans = [(e.time_range.start, e.time_range.end) for e in kernels]
    compute = [(e.time_range.start, e.time_range.end) for e in kernels if kernel_kind(e.name) != COMMUNICATION]
    busy = union_seconds(spans)
    kinds: dict[str, list[float]] = {}
    for e in kernels:
        acc = kinds.setdefault(kernel_kind(e.name), [0.0, 0])
        acc[0] += e.time_range.elapsed_us()
        acc[1] += 1
    summary = {
        "wall_s": wall,
        "device_busy_s": busy,
        "communication_alone_s": busy - union_seconds(compute),
        "kernels": len(kernels),
        "kernel_seconds_by_kind": {k: round(v[0] / 1e6, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1][0])},
        "kernel_count_by_kind": {k: v[1] for k, v in kinds.items()},
    }
    return summary, prof


def host_profiled(step: Callable[[], None], top: int = 30) -> tuple[dict[str, Any], str]:
    """Run `step` once under cProfile: where the host's time went, which torch.profiler cannot say (it times
    kernels, and the host only as the ops it dispatched). Returns the wall time, seconds of Python functions' own
    time by the package that defines them (`torch C calls` are torch's compiled functions, launches included), the
    `top` functions by own time, and the pstats text. cProfile slows Python calls, so shares matter, not seconds."""
    import cProfile
    import io
    import pstats

    import torch

    profiler = cProfile.Profile()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    profiler.enable()
    step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    by_package: dict[str, float] = {}
    functions = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        package = code_package(filename, name)
        by_package[package] = by_package.get(package, 0.0) + own
        label = name if filename == "~" else f"{name} ({Path(filename).name}:{line})"
        functions.append({"function": f"{package}: {label}", "calls": calls, "own_s": own, "cumulative_s": cumulative})
    functions.sort(key=lambda f: -f["own_s"])
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(80)
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(60)
    summary = {
        "wall_s": wall,
        "own_s_by_package": {k: round(v, 4) for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])},
        "top_functions": [
            {**f, "own_s": round(f["own_s"], 4), "cumulative_s": round(f["cumulative_s"], 4)} for f in functions[:top]
        ],
    }
    return summary, text.getvalue()


def code_package(filename: str, name: str) -> str:
    """The package a profiled function belongs to: the folder under site-packages (or medtune's own), `torch C
    calls` and `other C calls` for compiled functions (cProfile files them under "~"), `python` for the rest."""
    if filename == "~":
        return "torch C calls" if "torch" in name or "Tensor" in name else "other C calls"
    parts = Path(filename).parts
    if "site-packages" in parts or "dist-packages" in parts:
        index = max(i for i, part in enumerate(parts) if part in ("site-packages", "dist-packages"))
        return parts[index + 1].removesuffix(".py") if index + 1 < len(parts) else "python"
    return "medtune" if "medtune" in parts else "python"


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(key in lowered for key in keys)), "other")


def stage_profile(args: argparse.Namespace) -> None:
    """One step of each variant under torch.profiler (after warm-up): is the device busy, and with what?

    Device busy time is the union of kernel intervals; wall time minus busy time is time the device waited (for
    the host to launch work, or at a synchronisation). The kernel table goes to profile-VERSION-VARIANT.txt.
    """
    import torch

    for variant in args.variants or ["auto"]:
        recipe = medtune_recipe(args.version, args, *VARIANTS[variant])
        seed = recipe.cfg.train.seed
        for step in range(args.warmup):
            recipe.train_step(step_items(recipe.train_set, step, seed))
        items = step_items(recipe.train_set, args.warmup, seed)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        summary, prof = profiled(functools.partial(recipe.train_step, items))
        table = prof.key_averages().table(
            sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=40
        )
        (Path(args.out) / f"profile-{args.version}-{variant}.txt").write_text(table, encoding="utf-8")
        print(table, flush=True)
        emit(
            args,
            {
                "kind": "profile",
                "version": args.version,
                "variant": variant,
                **summary,
                "tokens": sum(len(e) for e in items),
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            },
        )
        recipe.cleanup()


# ---- correctness: (a) and (b) against an fp32 reference ------------------------------------------
def seed_lora(model) -> None:
    """Give every LoRA matrix the same non-zero values in all stacks (B starts at zero, which would hide A's
    gradient)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                param.copy_(torch.randn(param.shape, generator=generator) * LORA_CHECK_STD)


def trained_grads(model) -> dict[str, Any]:
    return {
        name: p.grad.detach().float().clone()
        for name, p in model.named_parameters()
        if p.requires_grad and p.grad is not None
    }


def fp32_reference(cfg, args: argparse.Namespace, items: list) -> tuple[float, dict[str, Any]]:
    """The same NF4 weights dequantized to fp32, fp32 LoRA and arithmetic, each sample alone (no padding, no
    packing)."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model

    device = compute_device()
    # loaded exactly as (a) and (b) load it, so the dequantized weights are theirs (bf16 values), then computed in fp32
    model = nf4_model(args, device)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                linear = torch.nn.Linear(
                    child.in_features, child.out_features, bias=False, device=device, dtype=torch.float32
                )
                linear.weight.data.copy_(
                    bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state).float()
                )
                setattr(parent, child_name, linear)
    for param in model.parameters():
        param.data = param.data.float()
    model.is_loaded_in_4bit = False
    model.config.use_cache = False
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=0.0,
        target_modules=list(cfg.lora.target_modules),
        modules_to_save=list(cfg.lora.modules_to_save) or None,
        ensure_weight_tying=bool(cfg.lora.modules_to_save),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    seed_lora(model)
    trained = sum(e.trained_tokens() for e in items)
    loss_total = 0.0
    for e in items:
        ids = torch.tensor([e.input_ids], device=device)
        loss = model(
            input_ids=ids,
            labels=torch.tensor([e.labels], device=device),
            num_items_in_batch=torch.tensor(trained, device=device),
        ).loss
        loss.backward()
        loss_total += float(loss.detach())
    return loss_total, trained_grads(model)


def relative_errors(grads: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """‖g − g_ref‖ / ‖g_ref‖ over all trained tensors and per group (lora_A, lora_B, embeddings)."""
    groups: dict[str, list[float]] = {}
    for name, ref in reference.items():
        group = "lora_A" if "lora_A" in name else "lora_B" if "lora_B" in name else "embeddings"
        diff = (grads[name] - ref).norm().item() ** 2 if name in grads else float("nan")
        for key in ("all", group):
            acc = groups.setdefault(key, [0.0, 0.0])
            acc[0] += diff
            acc[1] += ref.norm().item() ** 2
    missing = sorted(set(reference) ^ set(grads))
    errors = {key: (d / r) ** 0.5 if r else float("nan") for key, (d, r) in groups.items()}
    if missing:
        errors["names_differ"] = len(missing)
    return errors


def stage_check(args: argparse.Namespace) -> None:
    import torch

    cfg = run_config(args.version, args, "lora.dropout=0.0", "train.max_grad_norm=null")
    tokenizer, train_set = workload(cfg)
    items = step_items(train_set, 0, cfg.train.seed)

    ref_loss, ref_grads = fp32_reference(cfg, args, items)
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    model = reference_model(cfg, args, 0.0)
    seed_lora(model)
    model.train()
    a_loss = trainer_style_backward(model, items, cfg.train.per_device_batch_size, tokenizer.pad_token_id)
    a_grads = trained_grads(model)
    del model
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    variant = args.variants[0] if args.variants else "auto"  # (b) with the defaults, or one variant's settings
    recipe = medtune_recipe(args.version, args, "lora.dropout=0.0", "train.max_grad_norm=null", *VARIANTS[variant])
    seed_lora(recipe.model)
    captured: dict[str, Any] = {}
    recipe.optimizer.step = lambda *a, **k: captured.update(
        trained_grads(recipe.model)
    )  # the grads the update would use
    recipe.train_step(items)
    b_loss = recipe.window.loss / recipe.window.tokens
    emit(
        args,
        {
            "kind": "check",
            "version": args.version,
            "variant": variant,
            "samples": len(items),
            "trained_tokens": sum(e.trained_tokens() for e in items),
            "loss_fp32": ref_loss,
            "loss_a": a_loss,
            "loss_b": b_loss,
            "loss_rel_error_a": abs(a_loss - ref_loss) / abs(ref_loss),
            "loss_rel_error_b": abs(b_loss - ref_loss) / abs(ref_loss),
            "grad_rel_error_a": relative_errors(a_grads, ref_grads),
            "grad_rel_error_b": relative_errors(captured, ref_grads),
            "plan": recipe.speed_plan.as_dict(),
            "versions": versions(),
        },
    )


# ---- the fused head against the checkpointed chunks it replaced -----------------------------------
def stage_head(args: argparse.Namespace) -> None:
    """Time forward+backward of lm_head + CE on one micro-batch's trained tokens: medtune's fused version against the
    checkpointed-chunk version it replaced (kept here as the baseline)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from medtune.train.loss import linear_cross_entropy

    def chunk_loss(weight, hidden, targets):
        return F.cross_entropy((hidden @ weight.T).float(), targets, reduction="none")

    def checkpointed_chunks(hidden, weight, targets, chunk):
        return torch.cat(
            [
                checkpoint(chunk_loss, weight, hidden[s : s + chunk], targets[s : s + chunk], use_reentrant=False)
                for s in range(0, hidden.shape[0], chunk)
            ]
        ).sum()

    device = compute_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokens, hidden_size, vocab = (7400, 2048, 151936) if not args.tiny else (128, 64, 151936)
    generator = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, device=device, dtype=dtype, generator=generator) * 0.5
    targets = torch.randint(0, vocab, (tokens,), device=device, generator=generator)
    for trained in (False, True):
        weight = (
            torch.randn(vocab, hidden_size, device=device, dtype=dtype, generator=generator) * 0.02
        ).requires_grad_(trained)
        for name, fn in (
            ("checkpointed", checkpointed_chunks),
            ("fused", lambda h, w, t, c: linear_cross_entropy(h, w, t, c)[0]),
        ):
            for chunk in (1024, 4096):
                h = hidden.clone().requires_grad_()
                seconds = []
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                for _ in range(4):
                    started = time.perf_counter()
                    (fn(h, weight, targets, chunk) / tokens).backward()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds.append(time.perf_counter() - started)
                peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
                emit(
                    args,
                    {
                        "kind": "head",
                        "variant": name,
                        "head_trained": trained,
                        "chunk_tokens": chunk,
                        "tokens": tokens,
                        "ms": 1e3 * sorted(seconds[1:])[1],
                        "peak_gib": peak,
                    },
                )
                h.grad = weight.grad = None


# ---- prepare ---------------------------------------------------------------------------------------
def stage_prepare(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from medtune.model.tiny import TINY_SHAPE, shipped_tokenizer_dir

    target = model_dir(args)
    if (target / "config.json").exists():
        return
    values = qwen3_config("1.7b")
    for unused in ("transformers_version", "torch_dtype", "dtype"):
        values.pop(unused, None)
    values.update(TINY_SHAPE if args.tiny else QWEN3_SIZES[args.size])
    config = Qwen3Config(**values, medtune_random_weights=True)
    torch.manual_seed(0)
    with torch.device(compute_device()):
        model = (
            Qwen3ForCausalLM._from_config(config, dtype=torch.bfloat16)
            if not args.tiny and args.size in BUILT_IN_BF16
            else Qwen3ForCausalLM(config)
        )
    model.to(torch.bfloat16).save_pretrained(target)
    AutoTokenizer.from_pretrained(shipped_tokenizer_dir()).save_pretrained(target)
    print(
        f"random-weight Qwen3 ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters) -> {target}",
        flush=True,
    )


# ---- report ------------------------------------------------------------------------------------
def read_results(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.exists()
        else []
    )


def report(records: list[dict[str, Any]]) -> str:
    """Markdown tables: throughput per stack and variant with ratios to (a) and (c), the check, the head timing."""
    lines = []
    speed = [r for r in records if r["kind"] == "speed"]
    for version in sorted({r["version"] for r in speed}):
        rows = [r for r in speed if r["version"] == version]
        base = next((r["tokens_per_s"] for r in rows if r["stack"] == "reference"), None)
        unsloth = next((r["tokens_per_s"] for r in rows if r["stack"] == "unsloth"), None)
        lines += [
            f"\n{version}: non-pad tokens/s over {rows[0]['timed_steps']} timed steps after "
            f"{rows[0]['warmup_steps']} warm-up ({rows[0]['device']}, {rows[0]['date']})",
            "| stack | variant | tokens/s | without 1st timed step | steps/s | peak GiB (alloc / reserved) | MFU | "
            "vs (a) | vs (c) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            peak = f"{r['peak_gib']:.1f} / {r['peak_reserved_gib']:.1f}" if r.get("peak_gib") is not None else "-"
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
            vs_a = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
            vs_c = f"{r['tokens_per_s'] / unsloth:.2f}x" if unsloth else "-"
            later = (
                sum(r["step_tokens"][1:]) / sum(r["step_seconds"][1:]) if r["timed_steps"] > 1 else r["tokens_per_s"]
            )
            setting = r["variant"] + "".join(
                f", {part}"
                for part in (r.get("size", "1.7b"), f"{r.get('processes', 1)} processes")
                if part not in ("1.7b", "1 processes")
            )
            lines.append(
                f"| {STACKS[r['stack']]} | {setting} | {r['tokens_per_s']:,.0f} | {later:,.0f} | "
                f"{r['steps_per_s']:.3f} | {peak} | {mfu} | {vs_a} | {vs_c} |"
            )
    checks = [r for r in records if r["kind"] == "check"]
    if checks:
        lines += [
            "\ncorrectness on one step of 16 samples, relative to the fp32 reference (dropout 0, seeded non-zero LoRA)",
            "| version | loss fp32 | loss (a) err | loss (b) err | grad (a) err | grad (b) err | (b) lora_A / lora_B "
            "/ embeddings |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in checks:
            b = r["grad_rel_error_b"]
            groups = " / ".join(f"{b[g]:.2e}" for g in ("lora_A", "lora_B", "embeddings") if g in b)
            lines.append(
                f"| {r['version']} | {r['loss_fp32']:.5f} | {r['loss_rel_error_a']:.1e} | "
                f"{r['loss_rel_error_b']:.1e} | "
                f"{r['grad_rel_error_a']['all']:.2e} | {b['all']:.2e} | {groups} |"
            )
    heads = [r for r in records if r["kind"] == "head"]
    if heads:
        lines += [
            "\nlm_head + cross-entropy, forward+backward of one micro-batch's trained tokens",
            "| head | version | chunk | ms | peak GiB |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for r in heads:
            peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
            lines.append(
                f"| {'trained' if r['head_trained'] else 'frozen'} | {r['variant']} | {r['chunk_tokens']} | "
                f"{r['ms']:.1f} | {peak} |"
            )
    profiles = [r for r in records if r["kind"] == "profile"]
    if profiles:
        lines += [
            "\none profiled medtune step: device busy time (union of kernel intervals) against wall time, kernel "
            "time by kind",
            "| version | variant | tokens | wall s | busy s | device idle | kernels | kernel seconds by kind |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in profiles:
            kinds = ", ".join(f"{k} {v:.3f}" for k, v in r["kernel_seconds_by_kind"].items())
            lines.append(
                f"| {r['version']} | {r['variant']} | {r['tokens']:,} | {r['wall_s']:.3f} | {r['device_busy_s']:.3f} | "
                f"{1 - r['device_busy_s'] / r['wall_s']:.0%} | {r['kernels']:,} | {kinds} |"
            )
    lines += multigpu_report([r for r in records if r["kind"] == "multigpu"])
    lines += memory_report([r for r in records if r["kind"] == "memory"])
    errors = [r for r in records if r["kind"] == "error"]
    lines += [f"\nstage failed: {r['stage']} ({r['message']})" for r in errors]
    return "\n".join(lines)


def multigpu_report(records: list[dict[str, Any]]) -> list[str]:
    """Scaling against one GPU running the same size, version and variant (uncapped) in the same results file: the
    fastest such run, since the first training process on a fresh machine stalls a step (bench/RESULTS.md, "One GPU,
    2026-12-01"), so run the one-GPU stage twice."""
    if not records:
        return []
    lines = [
        "\nmulti-GPU: tokens/s of the whole step and per-GPU peaks (timed steps), against one GPU with the same "
        "settings",
        "| size | version | variant | parallelism | GPUs | cap GiB | status | tokens/s | speed-up | efficiency | "
        "peak GiB per GPU | "
        "largest peak / one GPU's | peak incl. loading | losses of the timed steps |",
        "| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | --- | --- |",
    ]

    def one_gpu(r: dict[str, Any]) -> dict[str, Any] | None:
        return max(
            (
                b
                for b in records
                if b["status"] == "ok"
                and b["parallelism"] == "none"
                and not b["cap_gib"]
                and not b.get("simulated_processes")
                and (b["size"], b["version"]) == (r["size"], r["version"])
                and one_process_settings(b) == one_process_settings(r)
            ),
            key=lambda b: b["tokens_per_s"],
            default=None,
        )

    def per_gpu(values: dict[str, float | None] | None) -> str:
        return ", ".join(f"{v:.1f}" for _, v in sorted(values.items()) if v is not None) or "-" if values else "-"

    for r in records:
        base, ok = one_gpu(r), r["status"] == "ok"
        simulated = r.get("simulated_processes")
        tokens_per_s = r["simulated_tokens_per_s"] if ok and simulated else r.get("tokens_per_s")
        speedup = tokens_per_s / base["tokens_per_s"] if ok and base and not r.get("shared_gpu") else None
        processes = simulated or r["processes"]
        largest = max((v for v in (r.get("peak_gib") or {}).values() if v is not None), default=None)
        base_peak = (
            max((v for v in (base.get("peak_gib") or {}).values() if v is not None), default=None) if base else None
        )
        cells = [
            r["size"],
            r["version"],
            variant_label(r),
            r["parallelism"]
            + (f", {simulated} shares one after another" if simulated else "")
            + (", all on one GPU" if r.get("shared_gpu") else ""),
            str(processes),
            str(r["cap_gib"] or "-"),
            r["status"],
            (f"{tokens_per_s:,.0f}" + (" (not a speed)" if r.get("shared_gpu") else "")) if ok else "-",
            f"{speedup:.2f}x" if speedup else "-",
            f"{speedup / processes:.0%}" if speedup else "-",
            per_gpu(r.get("peak_gib")),
            f"{largest / base_peak:.0%}" if largest and base_peak else "-",
            per_gpu(r.get("peak_before_timed_gib")),
            ", ".join(f"{v:.4f}" for v in r.get("losses", [])) or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    profiles = [(r, rank, summary) for r in records for rank, summary in sorted((r.get("profile") or {}).items())]
    if profiles:
        lines += [
            "\none profiled step after the timed ones, per GPU: where the wall time went",
            "| size | version | variant | parallelism | GPU | wall s | device busy | device idle | "
            "communication alone | kernel seconds by kind |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r, rank, summary in profiles:
            wall = summary["wall_s"]
            kinds = ", ".join(f"{kind} {seconds:.3f}" for kind, seconds in summary["kernel_seconds_by_kind"].items())
            cells = [
                r["size"],
                r["version"],
                r["variant"],
                r["parallelism"],
                rank,
                f"{wall:.3f}",
                f"{summary['device_busy_s'] / wall:.0%}",
                f"{1 - summary['device_busy_s'] / wall:.0%}",
                f"{summary['communication_alone_s'] / wall:.0%}",
                kinds or "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += repeated_runs_report(records)
    hosts = [
        (r, index, summary)
        for r in records
        for index, summary in enumerate((r.get("host_profile") or {}).get("0") or [])
    ]
    if hosts:
        lines += [
            "\none step (or each share of it) under cProfile, on the first GPU: the host's own time by package, as "
            "shares of the profiled wall time (cProfile slows Python, so shares matter, not seconds)",
            "| size | version | variant | run | wall s | own time by package |",
            "| --- | --- | --- | ---: | ---: | --- |",
        ]
        for r, index, summary in hosts:
            wall = summary["wall_s"]
            packages = ", ".join(
                f"{package} {seconds / wall:.0%}" for package, seconds in list(summary["own_s_by_package"].items())[:6]
            )
            lines.append(f"| {r['size']} | {r['version']} | {r['variant']} | {index} | {wall:.3f} | {packages} |")
    return lines


def compiled_triton(record: dict[str, Any]) -> bool:
    """Whether Triton compiled kernels inside a timed step (or share) of the run: not its steady speed."""
    pauses = [*(record.get("host_pauses") or []), *(p for step in record.get("share_pauses") or [] for p in step)]
    return any(pause.get("triton_compiled") for pause in pauses)


def repeated_runs_report(records: list[dict[str, Any]]) -> list[str]:
    """Every setting run more than once in the file: the spread of its tokens/s across runs (each its own process),
    runs in which Triton compiled kernels left out. A difference between settings smaller than their spreads is not
    a result (bench/RESULTS.md, "Host time by function")."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r["status"] != "ok" or r.get("shared_gpu") or compiled_triton(r):
            continue
        simulated = r.get("simulated_processes")
        key = (
            r["size"],
            r["version"],
            variant_label(r),
            r["parallelism"],
            simulated or r["processes"],
            bool(simulated),
        )
        groups.setdefault(key, []).append(r["simulated_tokens_per_s"] if simulated else r["tokens_per_s"])
    repeated = {key: runs for key, runs in groups.items() if len(runs) > 1}
    if not repeated:
        return []
    lines = [
        "\nsettings run more than once (runs with Triton compiling in a timed step left out): tokens/s across runs",
        "| size | version | variant | parallelism | GPUs | runs | median | lowest | highest | highest / lowest |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (size, version, variant, parallelism, processes, simulated), runs in repeated.items():
        shares = f", {processes} shares one after another" if simulated else ""
        lines.append(
            f"| {size} | {version} | {variant} | {parallelism}{shares} | {processes} | {len(runs)} | "
            f"{statistics.median(runs):,.0f} | {min(runs):,.0f} | {max(runs):,.0f} | {max(runs) / min(runs) - 1:+.1%} |"
        )
    return lines


def one_process_settings(record: dict[str, Any]) -> list[str]:
    """A run's settings that one process would train with: `zero1` (train.shard_optimizer) only acts across
    processes, so its one-GPU baseline is the plain run's; a `compiled` run's is a compiled one."""
    overrides = [
        o for o in record.get("overrides", VARIANTS.get(record["variant"], [])) if not o.startswith("train.shard")
    ]
    return overrides + (["compiled layers"] if record.get("compiled_layers") else [])


def variant_label(record: dict[str, Any]) -> str:
    return record["variant"] + (", compiled" if record.get("compiled_layers") else "")


def memory_report(records: list[dict[str, Any]]) -> list[str]:
    """Stack x size/version x cap: status, peak, tokens/s, and medtune's predicted peak and the levers its plan set."""
    if not records:
        return []
    lines = [
        "\nunder a per-process memory cap: status, peak GiB allocated / reserved (timed steps; at the failure for "
        "oom), "
        "tokens/s, medtune's prediction and plan",
        "| size | version | cap GiB | stack | status | peak GiB | tokens/s | predicted GiB | levers planned |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | --- |",
    ]
    order = {stack: index for index, stack in enumerate(STACKS)}
    for r in sorted(records, key=lambda r: (r["size"], r["version"], -(r["cap_gib"] or 0), order[r["stack"]])):
        peak = (
            "-"
            if r.get("peak_gib") is None
            else f"{r['peak_gib']:.1f}"
            + (f" / {r['peak_reserved_gib']:.1f}" if r.get("peak_reserved_gib") is not None else "")
        )
        cap = f"{r['cap_gib']:g}" + ("" if r.get("cap_applied") else " (not applied)") if r["cap_gib"] else "-"
        levers = (
            ", ".join(f"{change['lever']} {change['value']}" for change in (r.get("plan") or {}).get("levers", []))
            or "-"
        )
        predicted = f"{r['predicted_peak_gib']:.1f}" if r.get("predicted_peak_gib") is not None else "-"
        speed = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "-"
        lines.append(
            f"| {r['size']} | {r['version']} | {cap} | {STACKS[r['stack']]} | {r['status']} | {peak} | {speed} | "
            f"{predicted} | {levers} |"
        )
    return lines


# ---- orchestration -----------------------------------------------------------------------------
DEFAULT_STAGES = [
    "prepare",
    "medtune:v2:auto,row_ckpt85,row_ckpt100,auto",
    "unsloth:v2",
    "reference:v2",
    "medtune:v1:auto,row_ckpt85,row_ckpt100,auto",
    "unsloth:v1",
    "reference:v1",
    "check:v1",
    "check:v2",
    "head",
    "medtune:v2:before,+varlen,+bf16,+liger,peft_lora,peft_row",
]


def expand_stages(stages: list[str], nproc: int) -> list[str]:
    """Under torchrun each medtune variant gets its own launch: a process group is not set up twice in one process."""
    expanded = []
    for stage in stages:
        name, *rest = stage.split(":")
        if name == "medtune" and nproc > 1 and len(rest) > 1:
            expanded += [f"{name}:{rest[0]}:{variant}" for variant in rest[1].split(",")]
        else:
            expanded.append(stage)
    return expanded


def stage_command(name: str, rest: list[str], args: argparse.Namespace) -> list[str]:
    """The command line of one stage: `name:version:variant,...`, `prepare:SIZE`,
    `multigpu:SIZE:VERSION:PARALLELISM[:capGIB][:VARIANT][:profile][:hostprofile][:compiled][:shared][:sharesN]`
    (torchrun with --nproc processes unless PARALLELISM is none; `profile`: one more step under torch.profiler on
    every GPU; `hostprofile`: one more under cProfile; `compiled`: decoder layers through torch.compile; `shared`: every
    process on GPU 0; `sharesN`: one GPU trains a step's N data-parallel shares one after the other), or
    `memory:STACK:SIZE:VERSION:capGIB[:VARIANT]`. `--memory-cap` goes to every stage but prepare and report."""
    size, parallelism, options = args.size, "none", []
    if args.memory_cap and name not in ("prepare", "report"):
        options = ["--memory-cap", str(args.memory_cap)]
    if name == "prepare" and rest:
        size, rest = rest[0], []
    if name == "memory":
        if len(rest) < 4 or rest[0] not in STACKS or not rest[3].startswith("cap"):
            raise SystemExit(
                f"stage memory:{':'.join(rest)}: expected memory:STACK:SIZE:VERSION:capGIB[:VARIANT], STACK one of "
                f"{', '.join(STACKS)}"
            )
        stack, size, version, cap, *variants = rest
        options = ["--stack", stack, "--memory-cap", cap.removeprefix("cap")]
        rest = [version, *variants]
    if name == "multigpu":
        if len(rest) < 3 or rest[2] not in PARALLELISMS:
            raise SystemExit(
                f"stage multigpu:{':'.join(rest)}: expected "
                "multigpu:SIZE:VERSION:PARALLELISM[:capGIB][:VARIANT][:profile][:hostprofile][:compiled][:shared]"
                "[:sharesN], "
                f"PARALLELISM one of {', '.join(PARALLELISMS)}"
            )
        size, version, parallelism, *more = rest
        shares = [part.removeprefix("shares") for part in more if re.fullmatch(r"shares\d+", part)]
        if ("shared" in more and parallelism == "none") or (shares and parallelism != "none"):
            raise SystemExit(f"stage multigpu:{':'.join(rest)}: `shared` needs ddp or fsdp, `sharesN` needs none")
        caps = [part.removeprefix("cap") for part in more if part.startswith("cap")]
        flags = {
            "profile": "--profile",
            "hostprofile": "--host-profile",
            "compiled": "--compile-layers",
            "shared": "--shared-gpu",
        }
        variants = [part for part in more if not part.startswith(("cap", "shares")) and part not in flags]
        options = ["--parallelism", parallelism, *(["--memory-cap", caps[0]] if caps else [])]
        options += [flag for part, flag in flags.items() if part in more]
        options += ["--simulate-processes", shares[0]] if shares else []
        rest = [version, *variants]
    distributed = args.nproc > 1 and (name == "medtune" or parallelism != "none")
    launcher = [sys.executable] + (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"] if distributed else []
    )
    return [
        *launcher,
        __file__,
        name,
        *rest[:1],
        *(rest[1].split(",") if len(rest) > 1 else []),
        "--work",
        args.work,
        "--out",
        args.out,
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--size",
        size,
        *options,
    ] + (["--tiny"] if args.tiny else [])


def stage_all(args: argparse.Namespace) -> None:
    """Each stage in its own process (unsloth must own its interpreter); a failing stage is recorded and skipped."""
    deadline = time.monotonic() + args.budget_s
    for stage in expand_stages(args.stages or DEFAULT_STAGES, args.nproc):
        name, *rest = stage.split(":")
        left = deadline - time.monotonic()
        if left < 30:
            emit(args, {"kind": "error", "stage": stage, "message": "skipped: time budget spent"})
            continue
        command = stage_command(name, rest, args)
        env = dict(os.environ)
        if (name == "unsloth" or name == "memory" and rest[0] == "unsloth") and args.unsloth_site:
            env["PYTHONPATH"] = os.pathsep.join([args.unsloth_site, env.get("PYTHONPATH", "")])
        print(f"\n=== {stage} ({left:.0f} s left)", flush=True)
        started = time.monotonic()
        try:
            code = subprocess.run(command, env=env, timeout=left).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        print(f"=== {stage}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            emit(args, {"kind": "error", "stage": stage, "message": f"exit {code}"})
    print(report(read_results(Path(args.out) / "results.jsonl")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "stage",
        choices=[
            "all",
            "prepare",
            "check",
            "reference",
            "medtune",
            "unsloth",
            "head",
            "profile",
            "multigpu",
            "memory",
            "report",
        ],
    )
    parser.add_argument("version", nargs="?", choices=["v1", "v2"])
    parser.add_argument("variants", nargs="*", help=f"medtune variants, in order: {', '.join(VARIANTS)} (default auto)")
    parser.add_argument("--work", default="/tmp/medtune-bench", help="model and run folders")
    parser.add_argument("--out", default="bench/results", help="results.jsonl is appended here")
    parser.add_argument("--tiny", action="store_true", help="medtune's tiny Qwen3 and short sequences: a CPU dry run")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed optimizer steps first (2 left recompilation in unsloth's first timed step)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument(
        "--stages", nargs="*", help=f"for `all`: stage[:version[:variant,...]] (default {' '.join(DEFAULT_STAGES)})"
    )
    parser.add_argument(
        "--budget-s", type=float, default=540, help="for `all`: stop starting stages after this many seconds"
    )
    parser.add_argument("--unsloth-site", help="for `all`: folder put first on PYTHONPATH of the unsloth stage only")
    parser.add_argument(
        "--size",
        choices=list(QWEN3_SIZES),
        default="1.7b",
        help="Qwen3 size built by `prepare` and trained by the stages",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="for `all`: medtune stages run under torchrun with this many processes (GPUs)",
    )
    parser.add_argument(
        "--parallelism",
        choices=PARALLELISMS,
        default="none",
        help="for `multigpu`: one process, or DDP / FSDP under torchrun",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="for `multigpu`: after the timed steps, one more under torch.profiler on every GPU (idle, communication)",
    )
    parser.add_argument(
        "--host-profile",
        action="store_true",
        help="for `multigpu`: then one more step (each share under --simulate-processes) under cProfile: host time",
    )
    parser.add_argument(
        "--compile-layers",
        action="store_true",
        help="for `multigpu`: after one eager step, torch.compile every decoder layer (dynamic shapes)",
    )
    parser.add_argument(
        "--shared-gpu",
        action="store_true",
        help="for `multigpu`: every process on GPU 0, through gloo (losses and per-process peaks; not speed)",
    )
    parser.add_argument(
        "--simulate-processes",
        type=int,
        metavar="N",
        help="for `multigpu` with `--parallelism none`: train each step's N data-parallel shares one after another",
    )
    parser.add_argument(
        "--memory-cap",
        "--cap-gib",
        dest="memory_cap",
        type=float,
        metavar="GIB",
        help="each stage's process may reserve at most this much GPU memory (ignored on CPU)",
    )
    parser.add_argument(
        "--stack", choices=list(STACKS), default="medtune", help="for `memory`: the stack to run under the cap"
    )
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.stage == "report":
        print(report(read_results(Path(args.out) / "results.jsonl")))
        return
    if (
        args.stage in ("check", "reference", "medtune", "unsloth", "profile", "multigpu", "memory")
        and args.version is None
    ):
        parser.error(f"{args.stage} needs a version: v1 or v2")
    if unknown := set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    globals()[f"stage_{args.stage}"](args)


if __name__ == "__main__":
    main()
