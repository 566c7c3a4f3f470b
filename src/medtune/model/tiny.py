"""The offline default model: a small Qwen3 built from a config, random weights, real Qwen3 tokenizer.

It exercises the exact code path of a real run (Qwen3ForCausalLM, 4-bit quantization, LoRA, tied
embeddings, the real 151,669-token vocabulary) on a 2-core CPU. Its weights are random, so every report
on it says so: its losses show the pipeline works, not that anything medical was learned.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from medtune.model.cache import cached_folder, hash_text

TINY_NAME = "tiny"
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
)
TINY_SEED = 0


def shipped_tokenizer_dir() -> Path:
    return Path(str(resources.files("medtune") / "resources" / "tokenizer"))


def tiny_model_dir() -> Path:
    """Build the tiny model once into the cache (atomically) and return its folder."""
    key = json.dumps(TINY_SHAPE, sort_keys=True) + str(TINY_SEED)
    return cached_folder(f"tiny-qwen3-{hash_text(key):016x}", _build_tiny_model)


def _build_tiny_model(folder: Path) -> None:
    base = json.loads((shipped_tokenizer_dir() / "config.json").read_text())
    base.update(TINY_SHAPE, architectures=["Qwen3ForCausalLM"], medtune_random_weights=True)
    for unused in ("transformers_version", "torch_dtype", "dtype"):
        base.pop(unused, None)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream (its LoRA init) must not depend on the cache
        torch.manual_seed(TINY_SEED)
        model = Qwen3ForCausalLM(Qwen3Config(**base))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(shipped_tokenizer_dir()).save_pretrained(folder)
    shutil.copy(shipped_tokenizer_dir() / "generation_config.json", folder / "generation_config.json")


def is_random_weights(config: object) -> bool:
    return bool(getattr(config, "medtune_random_weights", False))
