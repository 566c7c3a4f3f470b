"""Host memory of loading the 4-bit base model under FSDP: whole in every process, or each process's shard only.

Builds a random-weight Qwen3 whose decoder layers hold nearly all weights (small vocabulary), then starts
--processes gloo processes on the CPU for each way of loading and records, per process, how much its private
(anonymous) resident memory grew at most during the load, sampled every millisecond from /proc (Linux), its peak
resident memory including the checkpoint pages transformers maps (shared by all processes through the page
cache), and the bytes of 4-bit weight storage it holds after the load. glibc keeps freed blocks of up to 32 MB in
its heap once it has freed one of that size, so resident memory then stays at its high-water mark whatever the load
frees; --mmap-threshold (MALLOC_MMAP_THRESHOLD_, default 128 KiB, 0 for glibc's own sliding threshold) has every
larger block mapped and unmapped on its own, so resident memory follows the memory in use:
    PYTHONPATH=src python bench/fsdp_load_memory.py --work DIR --out bench/results/DATE-fsdp-load/results.jsonl
`whole` is what every process loaded before each process kept only its own shard (`load_base_model(fsdp=True)`
outside a process group); `own_shard` is what a torchrun launch with `train.parallelism: fsdp` loads now.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from medtune.config import ModelConfig, QuantConfig
from medtune.model.load import WEIGHT_SHARD, load_base_model
from medtune.model.tiny import shipped_tokenizer_dir

MIB = 2**20


def build_model(folder: Path, layers: int, hidden: int, intermediate: int) -> None:
    """A random Qwen3 in bf16 with a 1,024-token vocabulary, so its decoder layers hold nearly all weights."""
    if (folder / "tokenizer_config.json").exists():  # written last
        return
    base = json.loads((shipped_tokenizer_dir() / "config.json").read_text())
    for unused in ("transformers_version", "torch_dtype", "dtype"):
        base.pop(unused, None)
    base.update(
        vocab_size=1024,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=hidden // 128,
        head_dim=128,
        tie_word_embeddings=False,
        medtune_random_weights=True,
        bos_token_id=None,
        eos_token_id=None,
        layer_types=None,
        max_window_layers=layers,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    Qwen3ForCausalLM(Qwen3Config(**base)).save_pretrained(folder)
    torch.set_default_dtype(torch.float32)
    AutoTokenizer.from_pretrained(shipped_tokenizer_dir()).save_pretrained(folder)


def four_bit_bytes(model: torch.nn.Module) -> int:
    """Bytes of 4-bit weight storage this process holds: registered weights and chunks kept aside for FSDP."""
    import bitsandbytes as bnb

    held = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            held += module.weight.untyped_storage().nbytes()
            if WEIGHT_SHARD in vars(module):
                held += getattr(module, WEIGHT_SHARD).local.untyped_storage().nbytes()
    return held


def status_mib(field: str) -> float:
    """A memory line of /proc/self/status (Linux), in MiB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1)) / 1024


def peak_private_growth(work: Callable[[], torch.nn.Module]) -> tuple[torch.nn.Module, float]:
    """Run `work` while a thread samples the private resident memory; returns its result and the largest growth."""
    before, peak, done = status_mib("RssAnon"), [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak[0] = max(peak[0], status_mib("RssAnon") - before)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return result, max(peak[0], status_mib("RssAnon") - before)


def measure(rank: int, folder: str, way: str, processes: int, init_file: str, results: str) -> None:
    torch.set_num_threads(1)

    def join() -> None:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=processes)

    if way == "own_shard":
        join()
    model, growth = peak_private_growth(
        lambda: load_base_model(ModelConfig(name_or_path=folder), QuantConfig(), torch.device("cpu"), fsdp=True).model
    )
    if way == "whole":
        join()
    checkpoint = sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))
    record = {
        "way": way,
        "rank": rank,
        "processes": processes,
        "private_peak_growth_mib": round(growth, 1),
        "rss_peak_mib": round(status_mib("VmHWM"), 1),
        "four_bit_held_mib": round(four_bit_bytes(model) / MIB, 1),
        "checkpoint_bf16_mib": round(checkpoint / MIB, 1),
    }
    dist.barrier()
    with open(results, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the random model and rendezvous files")
    parser.add_argument("--out", type=Path, help="results.jsonl to append to")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--mmap-threshold", type=int, default=128 * 1024, help="bytes; 0 = glibc's default")
    args = parser.parse_args()
    if args.mmap_threshold:  # read by glibc when each spawned process starts
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)

    folder = args.work / f"qwen3-{args.layers}x{args.hidden}x{args.intermediate}"
    build_model(folder, args.layers, args.hidden, args.intermediate)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = []
    for way in ("whole", "own_shard"):
        results, rendezvous = args.work / f"{way}.jsonl", args.work / f"rendezvous-{way}"
        results.unlink(missing_ok=True)
        rendezvous.unlink(missing_ok=True)
        torch.multiprocessing.spawn(
            measure, args=(str(folder), way, args.processes, str(rendezvous), str(results)), nprocs=args.processes
        )
        threshold = args.mmap_threshold or "glibc default"
        lines += [
            json.dumps({**json.loads(line), "model": folder.name, "mmap_threshold": threshold, "commit": commit})
            for line in sorted(results.read_text().splitlines())
        ]
    text = "".join(line + "\n" for line in lines)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
