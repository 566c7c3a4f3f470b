"""Bytes kept for the backward pass per token and decoder layer, with and without medtune's fused LoRA (CPU).

A Qwen3-1.7B-shaped model (the shipped config, 2 decoder layers, random weights) in 4-bit NF4 with LoRA r=64
on all seven projections and dropout 0.1, as in v2; one packed row of `--tokens` tokens, no checkpointing.
Every tensor saved for backward is counted once per storage (q/k/v share their input). Predicts how much
activation memory each kept (not recomputed) layer costs on the GPU, where Liger's kernels save less again.

    python bench/saved_activations.py --tokens 1024
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import BitsAndBytesConfig, Qwen3Config, Qwen3ForCausalLM

from medtune.config import LoraConfig
from medtune.model.load import apply_lora
from medtune.model.lora_fused import install_fused_lora
from medtune.model.tiny import shipped_tokenizer_dir


def saved_bytes_per_token_layer(fused: bool, tokens: int, layers: int) -> float:
    config = json.loads((shipped_tokenizer_dir() / "config.json").read_text())
    config.update(num_hidden_layers=layers, vocab_size=1024, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**config))
    model.save_pretrained("/tmp/medtune-saved-activations")
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = Qwen3ForCausalLM.from_pretrained(
        "/tmp/medtune-saved-activations", quantization_config=quant, device_map={"": "cpu"}
    )
    peft_model = apply_lora(model, LoraConfig(r=64, alpha=16, dropout=0.1))
    if fused:
        install_fused_lora(peft_model)
    peft_model.train()
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.requires_grad and tensor.is_leaf:  # parameters are not activations
            return tensor
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, 1024, (1, tokens))
    hidden = peft_model.get_base_model().model.embed_tokens(ids).detach()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = hidden
        for layer in peft_model.get_base_model().model.layers:
            position = torch.arange(tokens)[None]
            rotary = peft_model.get_base_model().model.rotary_emb(out, position)
            out = layer(out, position_embeddings=rotary, position_ids=position)
            out = out[0] if isinstance(out, tuple) else out
    return sum(seen.values()) / tokens / layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    for fused in (False, True):
        per_token = saved_bytes_per_token_layer(fused, args.tokens, args.layers)
        print(
            f"fused_lora={fused}: {per_token / 1024:.1f} KiB per token per layer "
            f"(fp32 CPU; {per_token / 2 / 1024:.1f} KiB in bf16; x 8,192 tokens = {per_token / 2 * 8192 / 2**30:.2f} "
            "GiB per kept layer)"
        )


if __name__ == "__main__":
    main()
