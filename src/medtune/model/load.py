"""Load the base model (4-bit or not) and its tokenizer, and wrap it with LoRA through PEFT.

All transformers / peft / bitsandbytes calls live here, so upstream keyword renames touch one file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist
from peft import LoraConfig as PeftLoraConfig
from peft import PeftConfig, PeftModel, get_peft_model
from torch.distributed.tensor import DTensor
from torch.nn.modules.module import register_module_parameter_registration_hook
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from medtune.config import LoraConfig, ModelConfig, QuantConfig
from medtune.hub import resolve_model_source
from medtune.model.gguf import gguf_model_folder
from medtune.model.tiny import TINY_NAME, is_random_weights, tiny_model_dir

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
EMBEDDING_MODULES = {"embed_tokens", "lm_head"}


@dataclass
class LoadedModel:
    """A base model as loaded. Its tokenizer is read from the same source on first use: a training run has its
    own already, and many callers need only the weights (reading Qwen3's tokenizer takes about a second)."""

    model: PreTrainedModel
    model_cfg: ModelConfig
    source: str
    random_weights: bool

    @functools.cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.model_cfg, self.source)


def model_source(cfg: ModelConfig) -> str:
    """What from_pretrained receives: the tiny model's or a de-quantised GGUF's cache folder, a local folder, or a
    hub id."""
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


def load_tokenizer(cfg: ModelConfig, source: str | None = None) -> PreTrainedTokenizerBase:
    """`cfg`'s tokenizer, from `source` when the caller has already resolved `model_source(cfg)`."""
    source = source or model_source(cfg)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    model_cfg: ModelConfig, quant_cfg: QuantConfig, device: torch.device, fsdp: bool = False
) -> LoadedModel:
    """Load weights exactly as a user with hub access would; quantize to 4-bit when asked.

    With `fsdp` the 4-bit weights are stored in the compute dtype (bf16 on CUDA) instead of uint8, the
    FSDP-QLoRA layout: FSDP shards them like the layer's other weights (see train/fsdp.py). With `fsdp` in a
    process group of several processes, each process also keeps only its own shard of every 4-bit weight
    (`keep_own_shards`), so no process ever holds the whole quantized model.
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
    processes = dist.get_world_size() if dist.is_initialized() else 1
    sharded = fsdp and quant_cfg.mode != "none" and processes > 1
    with keep_own_shards(dist.get_rank(), processes) if sharded else contextlib.nullcontext():
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if quant_cfg.mode == "none":
        model.to(device)
    model.config.use_cache = False
    return LoadedModel(model, model_cfg, source, is_random_weights(model.config))


WHOLE_MODEL_WARMUP = "caching_allocator_warmup"
"""transformers.modeling_utils' function that allocates the whole model's bytes on each GPU before loading."""
WEIGHT_SHARD = "medtune_weight_shard"
"""The attribute of a bitsandbytes Linear4bit that holds its `WeightShard` between loading and FSDP sharding."""


@dataclass(frozen=True)
class WeightShard:
    """This process's part of a 4-bit weight loaded for FSDP: chunk `rank` of `processes` along dim 0 of the packed
    storage, cut as FSDP2 cuts it (torch.chunk), for train/fsdp.py to put in place once the layer is sharded."""

    local: torch.Tensor
    rank: int
    processes: int


@contextlib.contextmanager
def keep_own_shards(rank: int, processes: int) -> Iterator[None]:
    """While loading, keep only this process's chunk of each 4-bit weight that bitsandbytes quantized.

    transformers reads, quantizes and registers the weights one at a time; as each quantized weight is registered
    on its Linear4bit, this process's chunk is copied aside (`WEIGHT_SHARD`) and the whole weight is dropped, so
    host and GPU memory hold one whole weight at a time plus this process's chunks. The weight registered instead
    is a placeholder of the same shape, dtype, device and quantization state whose storage is one element: PEFT
    reads its device, dtype and quantization settings to place and build the LoRA layers, and nothing reads its
    values before train/fsdp.py swaps in the chunk. Every process quantizes each whole weight, as a single process
    would, so the chunks and the quantization state (kept whole on the module, as bitsandbytes does) are bitwise
    those of a whole load.

    transformers' caching-allocator warm-up is left out meanwhile: before reading any weight it allocates the whole
    model's bytes on the GPU at once, which would put the whole model in the GPU peak again and fail under a memory
    cap smaller than the model. Without it the GPU cache grows by one weight's chunk at a time.
    """
    import bitsandbytes as bnb
    import transformers.modeling_utils

    def keep_own_chunk(module: torch.nn.Module, name: str, param: torch.nn.Parameter) -> torch.nn.Parameter | None:
        if not (
            isinstance(module, bnb.nn.Linear4bit)
            and name == "weight"
            and isinstance(param, bnb.nn.Params4bit)
            and param.bnb_quantized
            and not param.is_meta
        ):
            return None
        chunks = torch.chunk(param.data, processes, dim=0)
        local = chunks[rank].clone() if rank < len(chunks) else param.data.new_empty((0, *param.shape[1:]))
        setattr(module, WEIGHT_SHARD, WeightShard(local, rank, processes))
        return bnb.nn.Params4bit(
            param.data.new_empty(1).expand(param.shape),
            requires_grad=False,
            quant_state=param.quant_state,
            blocksize=param.blocksize,
            compress_statistics=param.compress_statistics,
            quant_type=param.quant_type,
            quant_storage=param.quant_storage,
            module=module,
            bnb_quantized=True,
        )

    with contextlib.ExitStack() as stack:
        if hasattr(transformers.modeling_utils, WHOLE_MODEL_WARMUP):  # an optimisation transformers may drop or rename
            stack.enter_context(mock.patch.object(transformers.modeling_utils, WHOLE_MODEL_WARMUP, lambda *args: None))
        stack.callback(register_module_parameter_registration_hook(keep_own_chunk).remove)
        yield


def embeddings_tied(model: PreTrainedModel) -> bool:
    """One matrix for embed_tokens and lm_head; under FSDP, one shard (a DTensor has no data pointer of its own)."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()

    def storage(weight: torch.Tensor) -> int:
        return (weight.to_local() if isinstance(weight, DTensor) else weight).data_ptr()

    return out is not None and storage(inp.weight) == storage(out.weight)


def apply_lora(model: PreTrainedModel, cfg: LoraConfig) -> PeftModel:
    """Freeze the base, add LoRA adapters, and train `modules_to_save` in full.

    A tied embed_tokens/lm_head pair trained in full stays one matrix (`tied_embeddings: keep`), so the
    adapter merges into a model whose tied config is still true; `untie` gives each its own copy and the
    caller records that the merged model must be saved untied.
    """
    trained_embeddings = EMBEDDING_MODULES & set(cfg.modules_to_save)
    tied = embeddings_tied(model)
    keep_tied = tied and cfg.tied_embeddings == "keep" and bool(trained_embeddings)
    if tied and trained_embeddings and cfg.tied_embeddings == "untie":
        log.warning(
            "embed_tokens and lm_head are tied in the base model; training them as two untied copies "
            "(tied_embeddings: untie)"
        )
    lora_config = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        modules_to_save=list(cfg.modules_to_save) or None,
        ensure_weight_tying=keep_tied,
        task_type="CAUSAL_LM",
    )
    with _quiet_peft(untied=tied and bool(trained_embeddings) and not keep_tied):
        return get_peft_model(model, lora_config)


def load_adapter(base: PreTrainedModel, adapter_dir: str | Path, trainable: bool = False) -> PeftModel:
    adapter = PeftConfig.from_pretrained(str(adapter_dir))
    untied = not getattr(adapter, "ensure_weight_tying", False) and bool(
        EMBEDDING_MODULES & set(getattr(adapter, "modules_to_save", None) or [])
    )
    with _quiet_peft(untied=untied and embeddings_tied(base)):
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)


@contextlib.contextmanager
def _quiet_peft(untied: bool) -> Iterator[None]:
    """Leave out PEFT's warnings that tell the user nothing: reading transformers' deprecated
    `is_gradient_checkpointing` (a FutureWarning in every run with transformers 5.2x), and, with
    `tied_embeddings: untie`, that a tied model's embeddings are trained untied: the run's choice, said in one line
    when training starts and recorded in the adapter's config."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        if untied:
            warnings.filterwarnings("ignore", message="Model has `tie_word_embeddings=True`", category=UserWarning)
        yield
