"""The offline default model: a small Qwen3 built from a config, random weights, real Qwen3 tokenizer.

It exercises the exact code path of a real run (Qwen3ForCausalLM, 4-bit quantization, LoRA, tied
embeddings, the real 151,669-token vocabulary) on a 2-core CPU. Its weights are random, so every report
on it says so: its losses show the pipeline works, not that anything medical was learned.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

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


def cache_dir() -> Path:
    return Path(os.environ.get("MEDTUNE_CACHE", Path.home() / ".cache" / "medtune")).expanduser()


def tiny_model_dir() -> Path:
    """Build the tiny model once into the cache (atomically) and return its folder."""
    key = json.dumps(TINY_SHAPE, sort_keys=True) + str(TINY_SEED)
    target = cache_dir() / f"tiny-qwen3-{hash_text(key):016x}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    base = json.loads((shipped_tokenizer_dir() / "config.json").read_text())
    base.update(TINY_SHAPE, architectures=["Qwen3ForCausalLM"], medtune_random_weights=True)
    for unused in ("transformers_version", "torch_dtype", "dtype"):
        base.pop(unused, None)
    config = Qwen3Config(**base)
    torch.manual_seed(TINY_SEED)
    Qwen3ForCausalLM(config).save_pretrained(staging)
    AutoTokenizer.from_pretrained(shipped_tokenizer_dir()).save_pretrained(staging)
    shutil.copy(shipped_tokenizer_dir() / "generation_config.json", staging / "generation_config.json")
    try:
        os.replace(staging, target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target


def hash_text(text: str) -> int:
    """A stable (unsalted) 64-bit hash, for cache keys."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def is_random_weights(config: object) -> bool:
    return bool(getattr(config, "medtune_random_weights", False))
