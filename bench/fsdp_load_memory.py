"""Host memory of loading the 4-bit base model under FSDP: whole in every process, or each process's shard only.

Builds a random-weight Qwen3 whose decoder layers hold nearly all weights (small vocabulary), then starts
--processes gloo processes on the CPU for each way of loading and records, per process, the growth of its peak
resident memory (ru_maxrss) over the load and the bytes of 4-bit weight storage it holds afterwards:
    PYTHONPATH=src python bench/fsdp_load_memory.py --work /tmp/fsdp-load --out bench/results/DATE-fsdp-load/results.jsonl
`whole` is what every process loaded before each process kept only its own shard (`load_base_model(fsdp=True)`
outside a process group); `own_shard` is what a torchrun launch with `train.parallelism: fsdp` loads now.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import Qwen3Config, Qwen3ForCausalLM

from medtune.config import ModelConfig, QuantConfig
from medtune.model.load import WEIGHT_SHARD, load_base_model
from medtune.model.tiny import shipped_tokenizer_dir

MIB = 2**20


def build_model(folder: Path, layers: int, hidden: int, intermediate: int) -> None:
    """A random Qwen3 in bf16 with a 1,024-token vocabulary, so its decoder layers hold nearly all weights."""
    if (folder / "config.json").exists():
        return
    base = json.loads((shipped_tokenizer_dir() / "config.json").read_text())
    for unused in ("transformers_version", "torch_dtype", "dtype"):
        base.pop(unused, None)
    base.update(vocab_size=1024, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128, head_dim=128,
                tie_word_embeddings=False, medtune_random_weights=True, layer_types=None, max_window_layers=layers)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    Qwen3ForCausalLM(Qwen3Config(**base)).save_pretrained(folder)
    torch.set_default_dtype(torch.float32)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((shipped_tokenizer_dir() / name).read_bytes())


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


def measure(rank: int, folder: str, way: str, processes: int, init_file: str, results: str) -> None:
    torch.set_num_threads(1)
    join = lambda: dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=processes)  # noqa: E731
    if way == "own_shard":
        join()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = load_base_model(ModelConfig(name_or_path=folder), QuantConfig(), torch.device("cpu"), fsdp=True).model
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if way == "whole":
        join()
    layer_bytes = sum(p.numel() * 2 for name, p in model.named_parameters() if ".layers." in name)  # as bf16
    record = {"way": way, "rank": rank, "processes": processes, "peak_rss_before_load_mib": round(before / MIB, 1),
              "peak_rss_growth_over_load_mib": round((after - before) / MIB, 1),
              "four_bit_held_mib": round(four_bit_bytes(model) / MIB, 1),
              "decoder_layers_bf16_mib": round(layer_bytes / MIB, 1)}
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
    args = parser.parse_args()

    folder = args.work / f"qwen3-{args.layers}x{args.hidden}x{args.intermediate}"
    build_model(folder, args.layers, args.hidden, args.intermediate)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = []
    for way in ("whole", "own_shard"):
        results, rendezvous = args.work / f"{way}.jsonl", args.work / f"rendezvous-{way}"
        results.unlink(missing_ok=True)
        rendezvous.unlink(missing_ok=True)
        torch.multiprocessing.spawn(measure, args=(str(folder), way, args.processes, str(rendezvous), str(results)),
                                    nprocs=args.processes)
        lines += [json.dumps({**json.loads(line), "model": folder.name, "commit": commit})
                  for line in sorted(results.read_text().splitlines())]
    text = "".join(line + "\n" for line in lines)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(text)

if __name__ == "__main__":
    main()
