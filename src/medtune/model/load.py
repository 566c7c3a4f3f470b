"""Load the base model (4-bit or not) and its tokenizer, and wrap it with LoRA through PEFT.

All transformers / peft / bitsandbytes calls live here, so upstream keyword renames touch one file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig, PeftModel, get_peft_model
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

from medtune.config import LoraConfig, ModelConfig, QuantConfig
from medtune.hub import resolve_model_source
from medtune.model.gguf import gguf_model_folder
from medtune.model.tiny import TINY_NAME, is_random_weights, tiny_model_dir

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
EMBEDDING_MODULES = {"embed_tokens", "lm_head"}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    random_weights: bool


def model_source(cfg: ModelConfig) -> str:
    """What from_pretrained receives: the tiny model's or a de-quantised GGUF's cache folder, a local folder, or a hub id."""
    if cfg.name_or_path == TINY_NAME:
        return str(tiny_model_dir())
    source = resolve_model_source(cfg.name_or_path, cfg.revision)
    if cfg.gguf_file:
        return str(gguf_model_folder(source, cfg.gguf_file, cfg.revision, cfg.trust_remote_code))
    return source


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    source = model_source(cfg)
    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_cfg: ModelConfig, quant_cfg: QuantConfig, device: torch.device, fsdp: bool = False) -> LoadedModel:
    """Load weights exactly as a user with hub access would; quantize to 4-bit when asked.

    With `fsdp` the 4-bit weights are stored in the compute dtype (bf16 on CUDA) instead of uint8, the
    FSDP-QLoRA layout: FSDP shards them like the layer's other weights (see train/fsdp.py).
    """
    source = model_source(model_cfg)
    compute_dtype = resolve_dtype(quant_cfg.compute_dtype, device)
    kwargs: dict = dict(
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
        dtype=compute_dtype,
    )
    if model_cfg.attn_implementation != "auto":
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if quant_cfg.mode != "none":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_cfg.mode,
            bnb_4bit_use_double_quant=quant_cfg.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=compute_dtype if fsdp else torch.uint8,
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if quant_cfg.mode == "none":
        model.to(device)
    model.config.use_cache = False
    return LoadedModel(model, load_tokenizer(model_cfg), source, is_random_weights(model.config))


def embeddings_tied(model: PreTrainedModel) -> bool:
    """One matrix for embed_tokens and lm_head; under FSDP, one shard (a DTensor has no data pointer of its own)."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()

    def storage(weight: torch.Tensor) -> int:
        return (weight.to_local() if isinstance(weight, DTensor) else weight).data_ptr()

    return out is not None and storage(inp.weight) == storage(out.weight)


def apply_lora(model: PreTrainedModel, cfg: LoraConfig, gradient_checkpointing: bool) -> PeftModel:
    """Freeze the base, add LoRA adapters, and train `modules_to_save` in full.

    A tied embed_tokens/lm_head pair trained in full stays one matrix (`tied_embeddings: keep`), so the
    adapter merges into a model whose tied config is still true; `untie` gives each its own copy and the
    caller records that the merged model must be saved untied.
    """
    trained_embeddings = EMBEDDING_MODULES & set(cfg.modules_to_save)
    tied = embeddings_tied(model)
    keep_tied = tied and cfg.tied_embeddings == "keep" and bool(trained_embeddings)
    if tied and trained_embeddings and cfg.tied_embeddings == "untie":
        log.warning("embed_tokens and lm_head are tied in the base model; training them as two untied copies (tied_embeddings: untie)")
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_config = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        modules_to_save=list(cfg.modules_to_save) or None,
        ensure_weight_tying=keep_tied,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def load_adapter(base: PreTrainedModel, adapter_dir: str | Path, trainable: bool = False) -> PeftModel:
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
