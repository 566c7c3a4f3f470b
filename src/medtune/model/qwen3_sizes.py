"""The published Qwen3 sizes, as their model cards' config.json give them, written as what differs from the shipped
Qwen3-1.7B config.json. The bench builds random-weight stand-ins of them and the memory model's tests predict their
peaks; one table, so the two cannot drift apart. Light to import (no torch): the bench's unsloth stage must import
unsloth before torch."""

from __future__ import annotations

import json
from typing import Any

QWEN3_SIZES: dict[str, dict[str, Any]] = {
    "1.7b": {},
    "4b": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    "14b": dict(
        hidden_size=5120,
        intermediate_size=17408,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    "32b": dict(
        hidden_size=5120,
        intermediate_size=25600,
        num_hidden_layers=64,
        num_attention_heads=64,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
}


def qwen3_config(size: str) -> dict[str, Any]:
    """The config.json values of a Qwen3 size: the shipped 1.7B config with the size's differences."""
    from medtune.model.tiny import shipped_tokenizer_dir

    return {**json.loads((shipped_tokenizer_dir() / "config.json").read_text()), **QWEN3_SIZES[size]}
