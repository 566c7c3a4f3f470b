"""`medtune export`: a GGUF file for llama.cpp and Ollama, and an Ollama Modelfile beside it.

The model (a run's adapter merged into a bf16 base in memory, or an already merged folder) is written with
the `gguf` package's writer and its tensor-name map, as llama.cpp's own `convert_hf_to_gguf.py` does: the
architecture's hyper-parameters, the byte-level BPE vocabulary with its merges, the special tokens and the
chat template. Tensors are converted and written one at a time, so peak memory stays the model plus one
tensor. Only the architectures medtune trains are supported (Qwen3, and Llama for SmolLM2); anything else
is refused with the reason, rather than written into a file llama.cpp would mis-read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from medtune.data.reply import TURN_END
from medtune.infer.decoding import Decoding
from medtune.infer.merge import EXISTS_WITHOUT_OVERWRITE, MERGE_FACTS_FILE, merged_model
from medtune.infer.runs import AdapterRun, is_model_folder, resolve_run
from medtune.model.tiny import is_random_weights
from medtune.run_folder import ADAPTER_DIR, write_atomic

QUANT_TYPES = {
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
FILE_TYPES = {
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
MODELFILE_SUFFIX = ".Modelfile"
OLLAMA_CONTEXT = 8192
"""Ollama's num_ctx (its default, 2048 or 4096 by version, cuts long thinking replies); capped at the model's own."""


class ExportError(RuntimeError):
    """The model cannot be written as a GGUF llama.cpp would read correctly; the message says why."""


@dataclass(frozen=True)
class Architecture:
    gguf_arch: gguf.MODEL_ARCH
    permute_qk: bool
    """llama.cpp's llama graph rotates interleaved pairs, HF's rotates halves: q/k rows are reordered (as
    convert_hf_to_gguf.py does). Qwen3 uses NeoX rotation in llama.cpp, the same as HF."""


ARCHITECTURES = {
    "Qwen3ForCausalLM": Architecture(gguf.MODEL_ARCH.QWEN3, permute_qk=False),
    "LlamaForCausalLM": Architecture(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
}

# llama.cpp names a tokenizer's pre-tokenizer (`tokenizer.ggml.pre`), which decides how text is split before BPE.
# Recognised here from tokenizer.json's own pre_tokenizer, so a tokenizer llama.cpp would split differently is refused.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BYTE_LEVEL_WITH_GPT2_REGEX = ("ByteLevel", True)
PRE_TOKENIZERS = {
    (("Split", _QWEN2_SPLIT), ("ByteLevel", False)): "qwen2",
    (("Split", _LLAMA3_SPLIT), ("ByteLevel", False)): "llama-bpe",
    (_BYTE_LEVEL_WITH_GPT2_REGEX,): "gpt-2",
    (("Digits", True), _BYTE_LEVEL_WITH_GPT2_REGEX): "smollm",
}


@dataclass
class ExportSource:
    """A plain transformers model to convert, and what the Modelfile needs to know about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    system_prompt: str | None
    """The system prompt the run trained with; None for a folder medtune did not merge."""
    random_weights: bool


def merge_facts(path: Path) -> dict:
    """What `merge` recorded beside a merged model (`system_prompt`, `random_weights`); empty for other folders."""
    facts_file = path / MERGE_FACTS_FILE
    return json.loads(facts_file.read_text(encoding="utf-8")) if facts_file.is_file() else {}


def load_model_folder(path: Path) -> ExportSource:
    """A merged (or any transformers) model folder; `medtune_merge.json`, when `merge` wrote one, gives the
    system prompt the run trained with."""
    facts = merge_facts(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()
    random = bool(facts.get("random_weights", is_random_weights(model.config)))
    return ExportSource(model, AutoTokenizer.from_pretrained(path), path.name, facts.get("system_prompt"), random)


def run_model_name(run: AdapterRun) -> str:
    """The name a run's model goes by (GGUF general.name, the served model id): the run, plus `-step-N` for a
    checkpoint (`v2-step-200`); an adapter folder named directly goes by its folder's name."""
    if run.checkpoint == ADAPTER_DIR or run.adapter_dir == run.output_dir:
        return run.output_dir.name
    return f"{run.output_dir.name}-step-{run.facts['step']}"


def load_source(path: Path, checkpoint: int | None = None) -> ExportSource:
    """RUN as `export` reads it: a merged model folder, or a run / adapter merged in memory.

    Raises:
        RunNotFoundError: RUN is neither a model folder nor a run medtune can load.
        ExportError: --checkpoint was given with a merged folder, which has no checkpoints.
    """
    path = Path(path).expanduser()
    if is_model_folder(path):
        if checkpoint is not None:
            raise ExportError(f"{path}: --checkpoint applies to a run folder; this is a merged model folder")
        return load_model_folder(path)
    run = resolve_run(path, checkpoint)
    model, tokenizer = merged_model(run)
    return ExportSource(model.eval(), tokenizer, run_model_name(run), run.config.data.system_prompt, run.random_weights)


def architecture_of(model: PreTrainedModel) -> Architecture:
    names = model.config.architectures or [type(model).__name__]
    supported = ", ".join(ARCHITECTURES)
    if names[0] not in ARCHITECTURES:
        raise ExportError(f"architecture {names[0]} is not supported for GGUF export (supported: {supported})")
    rope = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(
            f"rope scaling {rope.get('rope_type')!r} is not supported for GGUF export (only the default rope)"
        )
    return ARCHITECTURES[names[0]]


def pre_tokenizer_name(tokenizer: PreTrainedTokenizerBase) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE; refuses one it does not recognise."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())["pre_tokenizer"] or {}
    steps = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    key = []
    for step in steps:
        kind = step.get("type")
        detail = {
            "Split": (step.get("pattern") or {}).get("Regex"),
            "ByteLevel": step.get("use_regex"),
            "Digits": step.get("individual_digits"),
        }.get(kind)
        key.append((kind, detail))
    name = PRE_TOKENIZERS.get(tuple(key))
    if name is None:
        raise ExportError(
            f"the tokenizer's pre-tokenizer {key} is not one medtune can name for llama.cpp "
            f"(known: {', '.join(sorted(PRE_TOKENIZERS.values()))})"
        )
    return name


def vocabulary(tokenizer: PreTrainedTokenizerBase, rows: int) -> tuple[list[str], list[int]]:
    """Tokens and llama.cpp token types for every embedding row, as convert_hf_to_gguf.py lists them.

    Special added tokens (`<|im_end|>`) are CONTROL, other added tokens (`<think>`) USER_DEFINED, so both
    stay whole; rows the tokenizer does not use (Qwen3 pads its embedding to 151,936) get `[PAD<id>]`.
    """
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= rows:
        raise ExportError(f"the tokenizer has token id {max(by_id)} but the embedding has only {rows} rows")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(rows):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        if index in added:
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _permute_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half row order to llama.cpp's interleaved pairs (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def gguf_tensors(model: PreTrainedModel, arch: Architecture) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) for every weight; lm_head is left out when tied (llama.cpp then reuses token_embd)."""
    config = model.config
    names = gguf.get_tensor_name_map(arch.gguf_arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"tensor {hf_name} has no GGUF name for {arch.gguf_arch.name.lower()}")
        if arch.permute_qk and hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            tensor = _permute_rotary_rows(tensor, config.num_attention_heads)
        elif arch.permute_qk and hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            tensor = _permute_rotary_rows(tensor, config.num_key_value_heads)
        yield name, tensor


def tensor_type(quant: str, shape: tuple[int, ...]) -> gguf.GGMLQuantizationType:
    """Norms (1-D) stay F32, as in llama.cpp; a matrix whose rows do not split into Q8_0 blocks falls back to F16."""
    if len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    qtype = QUANT_TYPES[quant]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def encode_tensor(tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    data = tensor.detach().to(torch.float32).cpu().numpy()
    if qtype == gguf.GGMLQuantizationType.F32:
        return data
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


def _add_hyperparameters(writer: gguf.GGUFWriter, model: PreTrainedModel, arch: Architecture, quant: str) -> None:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(model.get_input_embeddings().weight.shape[0])
    writer.add_file_type(FILE_TYPES[quant])
    if quant == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, rows: int) -> None:
    """Vocabulary and types here; merges, special ids and the chat template through gguf's SpecialVocab,
    which reads them from the tokenizer's saved files as llama.cpp's converter does."""
    if TURN_END not in tokenizer.get_vocab():
        raise ExportError(f"the tokenizer has no {TURN_END} token; medtune exports ChatML models only")
    tokens, types = vocabulary(tokenizer, rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=rows)
    if not special.merges:
        raise ExportError("the tokenizer has no BPE merges; medtune exports byte-level BPE tokenizers only")
    # Training ended every reply with <|im_end|>: it is the end of generation, whatever the base called eos.
    special.special_token_ids["eos"] = tokenizer.convert_tokens_to_ids(TURN_END)
    special.add_to_gguf(writer, quiet=True)
    first_ids = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and first_ids[:1] == [tokenizer.bos_token_id])


def _add_sampling(writer: gguf.GGUFWriter) -> None:
    """llama.cpp's default sampling for this file: the decoding medtune's chat uses (Qwen3 thinking mode)."""
    decoding = Decoding()
    writer.add_sampling_temp(decoding.temperature)
    writer.add_sampling_top_p(decoding.top_p)
    writer.add_sampling_top_k(decoding.top_k)
    writer.add_sampling_min_p(decoding.min_p)


def write_gguf(source: ExportSource, output: Path, quant: str) -> Path:
    """Write `output` through a temporary sibling file renamed into place; returns `output`."""
    if quant not in QUANT_TYPES:
        raise ExportError(f"--quant {quant!r} is not one of {', '.join(QUANT_TYPES)}")
    model = source.model
    arch = architecture_of(model)
    rows = model.get_input_embeddings().weight.shape[0]
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.tmp")
    writer = gguf.GGUFWriter(staging, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(source.name)
        _add_hyperparameters(writer, model, arch, quant)
        _add_tokenizer(writer, source.tokenizer, rows)
        _add_sampling(writer)
        with torch.no_grad():
            # Two passes over the weights: the header lists every tensor before any data is written.
            for name, tensor in gguf_tensors(model, arch):
                shape, qtype = tuple(tensor.shape), tensor_type(quant, tuple(tensor.shape))
                byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)  # the writer takes every type's size in bytes
                writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for _name, tensor in gguf_tensors(model, arch):
                writer.write_tensor_data(encode_tensor(tensor, tensor_type(quant, tuple(tensor.shape))))
        writer.close()
        os.replace(staging, output)
    except BaseException:
        writer.close()
        staging.unlink(missing_ok=True)
        raise
    return output


# Ollama's Go template rendering the prompt the Qwen3 chat template renders for a conversation that ends with
# a user turn: earlier assistant turns keep only their answer (Ollama hands their reasoning in as .Thinking,
# which the Qwen3 template drops too), and the assistant header closes the prompt. Thinking is shown only on a
# final assistant turn, the one Ollama continues; it also tells Ollama the model thinks in <think> tags.
OLLAMA_TEMPLATE = """\
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if and $last .Thinking }}<think>
{{ .Thinking }}
</think>

{{ end }}{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""


def _triple_quoted(field: str, text: str) -> str:
    if '"""' in text:
        raise ExportError(f'the {field} contains """, which an Ollama Modelfile cannot quote')
    return f'{field} """{text}"""'


def modelfile_text(gguf_name: str, system_prompt: str | None, context_length: int) -> str:
    """The Modelfile: the GGUF beside it, the chat template, the trained system prompt, stop and sampling."""
    decoding = Decoding()
    lines = [
        f"# Ollama model: ollama create NAME -f {gguf_name.removesuffix('.gguf')}{MODELFILE_SUFFIX}",
        f"FROM ./{gguf_name}",
        _triple_quoted("TEMPLATE", OLLAMA_TEMPLATE),
    ]
    if system_prompt:
        lines.append(_triple_quoted("SYSTEM", system_prompt))
    lines += [
        f'PARAMETER stop "{TURN_END}"',
        f"PARAMETER temperature {decoding.temperature}",
        f"PARAMETER top_p {decoding.top_p}",
        f"PARAMETER top_k {decoding.top_k}",
        f"PARAMETER min_p {decoding.min_p}",
        f"PARAMETER num_predict {decoding.max_new_tokens}",
        f"PARAMETER num_ctx {min(OLLAMA_CONTEXT, context_length)}",
    ]
    return "\n".join(lines) + "\n"


def modelfile_path(gguf_path: Path) -> Path:
    return gguf_path.with_name(gguf_path.name.removesuffix(".gguf") + MODELFILE_SUFFIX)


def check_gguf_path(output: Path, overwrite: bool = False) -> None:
    """Refuses an output name, or replacing the GGUF or its Modelfile without --overwrite, before the (long) model
    loading, not after."""
    if output.suffix != ".gguf":
        raise ExportError(f"{output}: the output file must end in .gguf")
    for path in (output, modelfile_path(output)):
        if path.exists() and not overwrite:
            raise ExportError(f"{path} {EXISTS_WITHOUT_OVERWRITE}")


def export(
    source: ExportSource, output: Path, quant: str, system_prompt: str | None = None, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write the GGUF and its Modelfile; `system_prompt` overrides the one the run trained with."""
    check_gguf_path(output, overwrite)
    prompt = system_prompt if system_prompt is not None else source.system_prompt
    text = modelfile_text(
        output.name, prompt, source.model.config.max_position_embeddings
    )  # may refuse: before the long write
    write_gguf(source, output, quant)
    modelfile = modelfile_path(output)
    write_atomic(modelfile, text)
    return output, modelfile
