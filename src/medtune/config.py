"""Typed run configuration: YAML files with `base:` inheritance, dotted `--set` overrides, strict validation.

Every key has a default here and nowhere else; recipe code reads attributes, never `cfg.get(key, default)`,
so a misspelt key is an error (with the nearest valid key suggested) instead of being silently ignored.
"""

from __future__ import annotations

import codecs
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

REFERENCE_SYSTEM_PROMPT = "你是一个医学专家，你需要根据用户的问题，给出带有思考的回答。"
DEFAULT_SEED = 42
"""train.seed's default; `ablate --seeds N` counts up from it."""
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and every bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name_or_path: str = Field(
        "tiny",
        description=(
            "Hub id (Qwen/Qwen3-1.7B), local folder, `modelscope:<id>`, or `tiny` (offline random-weight Qwen3)."
        ),
    )
    gguf_file: str | None = Field(
        None, description="GGUF file inside name_or_path (or a path), de-quantised by transformers."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Kept off: Qwen3 is native to transformers.")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = "auto"


class QuantConfig(_Strict):
    mode: Literal["nf4", "fp4", "none"] = Field("nf4", description="4-bit base weights through bitsandbytes, or none.")
    double_quant: bool = True
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description=(
            "auto = bf16 on CUDA (the reference experiment's), fp32 on CPU, where bf16 matmuls are several times "
            "slower."
        ),
    )


class LoraConfig(_Strict):
    r: int = Field(64, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_PROJECTIONS))
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full, e.g. [embed_tokens, lm_head]."
    )
    tied_embeddings: Literal["keep", "untie"] = Field(
        "keep",
        description=(
            "When embed_tokens and lm_head are both trained on a tied model: keep them one matrix, or untie on purpose."
        ),
    )


class DataConfig(_Strict):
    train: str = Field(
        "medtune:delicate_medical_r1_val",
        description="JSONL/JSON/CSV/TSV/Parquet file, or `medtune:<name>` for shipped data.",
    )
    validation: str | None = Field(None, description="Validation file; when absent, a seeded `val_fraction` of train.")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    format: Literal["auto", "qta", "alpaca", "messages"] = "auto"
    columns: dict[Literal["system", "question", "think", "answer"], str | list[str]] = Field(
        default_factory=dict,
        description=(
            "The file's column (CSV/TSV/Parquet) or key (JSON) for each field, e.g. {question: ask, answer: answer}; "
            "a list joins several columns with a newline ([title, ask]). Fields not named keep their own name. "
            "Rows are then qta."
        ),
    )
    encoding: str = Field(
        "utf-8", description="Text encoding of JSONL/JSON/CSV/TSV files, e.g. gb18030 or gbk (Parquet is always UTF-8)."
    )
    think: Literal["required", "optional"] = Field(
        "required",
        description="optional = a row without reasoning trains with an empty think block, as Qwen3 writes it "
        "with thinking off; such rows are counted in the data stats. required = such a row is a bad row.",
    )
    literal_tags: Literal["error", "text"] = Field(
        "error",
        description="A field holding a chat-template tag (<think>, </think>, <|im_start|>, <|im_end|>, "
        "<|endoftext|>): error = a bad row; text = kept and tokenized as ordinary characters, never as the tag's "
        "token.",
    )
    system_prompt: str = REFERENCE_SYSTEM_PROMPT
    max_length: int = Field(2048, gt=16)
    skip_bad_rows: bool = Field(
        False, description="Skip invalid rows (counted and listed in data_stats.json) instead of stopping."
    )
    max_rows: int | None = Field(None, gt=0, description="Use only the first N rows of each file (quick runs).")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        """A text codec Python knows, under its canonical name."""
        try:
            "a".encode(value)  # a LookupError for unknown names and for codecs that are not text encodings (base64)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}; e.g. utf-8, gb18030, gbk, big5, utf-16") from None
        return codecs.lookup(value).name

    @field_validator("columns")
    @classmethod
    def _named_columns(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for field_name, column in value.items():
            names = [column] if isinstance(column, str) else column
            if not names or not all(name.strip() for name in names):
                raise ValueError(f"columns.{field_name} must name a column, got {column!r}")
        return value

    @model_validator(mode="after")
    def _columns_mean_qta(self) -> DataConfig:
        if self.columns and self.format not in ("auto", "qta"):
            raise ValueError(
                f"columns name the question/think/answer fields, so format must be auto or qta, got {self.format}"
            )
        return self


MaskedField = Literal["question", "think", "answer"]


def _mask_questions_only() -> list[MaskedField]:
    """Typed, so the default factory's list is a list of fields and not of plain strings."""
    return ["question"]


class AugmentConfig(_Strict):
    """The v3 medical-term masking augmentation (`data/augment.py`), drawn afresh at batch-building time."""

    enabled: bool = False
    preset: Literal["none", "reference-compatible"] = Field(
        "none",
        description=(
            "reference-compatible = the reference experiment's masking; it fixes every key below but probability."
        ),
    )
    probability: float = Field(
        0.1, ge=0, le=1, description="Share of the samples drawn that get terms masked (if they contain any)."
    )
    terms_per_sample: tuple[int, int] = Field(
        (1, 2), description="[low, high]: distinct terms masked per masked sample, drawn uniformly."
    )
    mask_styles: list[str] = Field(
        default_factory=lambda: ["[MASK]", "[{category}]", "..."],
        description="Chosen uniformly per term; `{category}` becomes the term's category tag, e.g. [症状].",
    )
    fields: list[MaskedField] = Field(
        default_factory=_mask_questions_only,
        description="Where terms are masked; the question is prompt, so masks there never touch the loss.",
    )
    occurrence: Literal["first", "all"] = Field(
        "first", description="Replace a chosen term's first occurrence in the field, or all of them."
    )
    mask_loss: Literal["exclude", "include"] = Field(
        "exclude",
        description=(
            "exclude = masks in think/answer are left out of the loss, so the model never learns to write them."
        ),
    )
    lexicon: str = Field(
        "medical", description="`medical` (shipped), `reference` (the reference experiment's 12 words) or a file path."
    )
    redraw_every_epoch: bool = Field(
        True,
        description=(
            "Draw masks afresh each epoch; false = decide once per sample, as masking at data preparation does."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill in the reference experiment's values; a key set to something else is an error, not silently
        overridden."""
        if not isinstance(data, dict) or data.get("preset") != "reference-compatible":
            return data
        reference = {
            "fields": ["answer"],
            "lexicon": "reference",
            "occurrence": "first",
            "terms_per_sample": (1, 1),
            "mask_styles": ["[MASK]", "[TERM]", "..."],
            "mask_loss": "include",
            "redraw_every_epoch": False,
        }

        def comparable(value: Any) -> Any:  # YAML gives lists where the model holds tuples
            return tuple(value) if isinstance(value, list) else value

        conflicts = [
            f"{key}: {data[key]!r} (the preset needs {value!r})"
            for key, value in reference.items()
            if key in data and comparable(data[key]) != comparable(value)
        ]
        if conflicts:
            raise ValueError(
                "preset reference-compatible fixes " + "; ".join(conflicts) + ". Remove these keys or set preset: none"
            )
        return {**data, **reference}

    @model_validator(mode="after")
    def _check_range(self) -> AugmentConfig:
        low, high = self.terms_per_sample
        if not 1 <= low <= high:
            raise ValueError(
                f"terms_per_sample must be [low, high] with 1 <= low <= high, got {list(self.terms_per_sample)}"
            )
        if not self.mask_styles or not all(self.mask_styles):
            raise ValueError(f"mask_styles must name at least one style, none empty, got {self.mask_styles}")
        if not self.fields or len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields must name at least one field, each once, got {self.fields}")
        if not self.lexicon.strip():
            raise ValueError("lexicon must be `medical`, `reference` or a file path, got an empty string")
        return self


class TrainConfig(_Strict):
    optimizer: Literal["auto", "paged_adamw_8bit", "adamw_8bit", "adamw"] = Field(
        "auto", description="auto = paged 8-bit AdamW on CUDA (the reference experiment's), torch AdamW elsewhere."
    )
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = Field(0.3, gt=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    per_device_batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(4, gt=0)
    max_steps: int | None = Field(400, gt=0)
    epochs: float | None = Field(None, gt=0)
    seed: int = DEFAULT_SEED
    gradient_checkpointing: bool = True
    packing: bool = Field(True, description="Pack a step's samples into rows; attention stays inside each sample.")
    loss_chunk_tokens: int = Field(1024, gt=0, description="Tokens per chunk of the fused lm_head + cross-entropy.")
    logging_steps: int = Field(10, gt=0)
    eval_steps: int | None = Field(100, gt=0)
    save_steps: int = Field(400, gt=0)
    save_total_limit: int = Field(2, gt=0)
    report_to: list[Literal["swanlab", "tensorboard", "wandb"]] = Field(default_factory=list)
    parallelism: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="With several processes: ddp = every process holds the whole model; fsdp = decoder layers "
        "sharded across processes (FSDP2 + QLoRA), for Qwen3 sizes that do not fit one GPU. Launched the same way; "
        "one process trains alike with either.",
    )
    shard_optimizer: bool = Field(
        False,
        description="DDP: each trained tensor is stepped by one process, which keeps its optimizer states and sends "
        "the stepped tensor to the others (ZeRO stage 1): less optimizer time and memory per process. FSDP always "
        "shards. Not yet measured on GPUs.",
    )

    @model_validator(mode="after")
    def _check_length(self) -> TrainConfig:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of max_steps and epochs")
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("set warmup_ratio or warmup_steps, not both")
        return self

    def samples_per_step(self) -> int:
        return self.per_device_batch_size * self.gradient_accumulation_steps

    def total_steps(self, train_rows: int) -> int:
        """Optimizer steps of the run: max_steps, or enough for `epochs` passes over the training rows."""
        if self.max_steps is not None:
            return self.max_steps
        assert self.epochs is not None, "the validator requires max_steps or epochs"
        return math.ceil(self.epochs * train_rows / self.samples_per_step())

    def resolved_optimizer(self, device_type: str) -> str:
        """auto: paged 8-bit AdamW on CUDA (the reference; under FSDP too, on each process's chunks), torch AdamW
        on the CPU, where bitsandbytes cannot page."""
        if self.optimizer != "auto":
            return self.optimizer
        return "paged_adamw_8bit" if device_type == "cuda" else "adamw"


MEMORY_SIZE_UNITS = {
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}


def parse_memory_size(text: str) -> int:
    """`20GiB`, `8GB`, `512MiB`, `1.5 GiB` -> bytes; anything else (no unit, another unit, zero) is a ValueError."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)\s*", text)
    if match is None or match.group(2) not in MEMORY_SIZE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(
            f"expected a size such as 20GiB, 8GB or 512MiB (units: {', '.join(MEMORY_SIZE_UNITS)}), got {text!r}"
        )
    return int(float(match.group(1)) * MEMORY_SIZE_UNITS[match.group(2)])


class SpeedConfig(_Strict):
    """GPU speed levers (`model/speed.py`). None changes the math; each falls back cleanly where it is unsupported."""

    packed_attention: Literal["auto", "varlen", "per_sample", "mask"] = Field(
        "auto",
        description=(
            "How attention stays inside each sample of a packed row: varlen = one flash-attention call over the "
            "row (CUDA), per_sample = one SDPA call per sample (any device), mask = the model's own attention with "
            "the block-diagonal mask transformers builds from position_ids. auto = varlen where it works; else mask "
            "on CUDA (3.7x faster there than per_sample, bench/RESULTS.md) and per_sample elsewhere."
        ),
    )
    mixed_precision: Literal["auto", "bf16", "none"] = Field(
        "auto",
        description="bf16 autocast of the forward pass, as HF Trainer's bf16=True: LoRA matmuls run in bf16 on fp32 "
        "adapter weights. auto = on when the base computes in bf16 (CUDA).",
    )
    fused_kernels: Literal["auto", "liger", "none"] = Field(
        "auto",
        description="Liger's fused RMSNorm, SwiGLU and RoPE kernels. auto = on with CUDA and the liger-kernel package.",
    )
    checkpoint_fraction: float = Field(
        0.75,
        ge=0,
        le=1,
        description="Share of decoder layers that recompute their activations in the backward pass when "
        "train.gradient_checkpointing is on; the others keep them (a little faster, more memory: about 1.1 GiB per "
        "kept "
        "Qwen3-1.7B layer in a 12,900-token row). 0.75 keeps v1/v2 under the reference stack's peak memory; 1.0 "
        "halves it at a few per cent of speed (bench/RESULTS.md).",
    )
    packed_row_tokens: int | None = Field(
        16384,
        gt=0,
        description=(
            "With train.packing, a packed row (one forward pass) holds up to this many tokens, so a step of a few "
            "thousand tokens runs as one pass instead of several: the step is bound by the host's launch work per "
            "pass, not by the GPU (bench/RESULTS.md). Activation memory grows with it. "
            "null = per_device_batch_size x data.max_length."
        ),
    )
    fused_lora: bool = Field(
        True,
        description="Each LoRA projection, its 4-bit base matmul included, as one autograd function "
        "(model/lora_fused.py): a fraction of the host work of PEFT + bitsandbytes per projection, the NF4 weight "
        "dequantized in one kernel, and only the dropout mask kept for the backward pass instead of a dropped-out "
        "copy of "
        "the input. Same math as PEFT's forward; any device. false = PEFT's own forward.",
    )
    memory_budget: str = Field(
        "auto",
        description="GPU memory training plans to fit (model/memory_plan.py): auto = the device's free memory "
        "(within a per-process cap, if one is set) less a margin, or a size such as 20GiB, 8GB, 512MiB. Levers not set "
        "explicitly are changed, cheapest first, until the predicted peak fits; a run that cannot fit stops before "
        "training. No planning on CPU.",
    )
    offload_activations: bool | Literal["auto"] = Field(
        "auto",
        description="Move the tensors decoder layers save for the backward pass (with every layer recomputed: "
        "just their inputs) to pinned host memory in the forward pass and back in the backward pass, copied on a "
        "side stream (model/offload.py). auto = only when the memory plan needs it.",
    )

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _budget_is_auto_or_a_size(cls, value: Any) -> Any:
        """A bare number is refused with the units, not read as bytes or GiB."""
        if value != "auto":
            parse_memory_size(str(value))
        return value


class RunConfig(_Strict):
    run_name: str = "run"
    output_dir: str = "runs"
    model: ModelConfig = Field(default_factory=ModelConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    speed: SpeedConfig = Field(default_factory=SpeedConfig)

    @model_validator(mode="after")
    def _check_row(self) -> RunConfig:
        rows = self.speed.packed_row_tokens
        if self.train.packing and rows is not None and rows < self.data.max_length:
            raise ValueError(
                f"speed.packed_row_tokens ({rows}) is below data.max_length ({self.data.max_length}): "
                "a sample of max_length tokens would not fit a row"
            )
        return self

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def row_tokens(self) -> int:
        """Token capacity of a packed row: speed.packed_row_tokens, else per_device_batch_size x max_length."""
        return self.speed.packed_row_tokens or self.train.per_device_batch_size * self.data.max_length


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key written twice in one mapping is an error: safe_load keeps the last one, so a
    second `train:` section would silently drop every key of the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} written twice (first on line {first_line[key]})", key_node.start_mark
                )
            first_line.setdefault(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """YAML text as Python values, a key written twice in one mapping refused (`_UniqueKeyLoader`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain values only, never objects


def read_yaml_mapping(path: Path, kind: str = "config", error: type[Exception] = ConfigError) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (a config, an experiment, a run's or a tracker's config); every
    failure is an `error` naming the file, so each reader keeps its own exit code."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {kind} file not found") from None
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as err:  # one line: where the parser stopped, and why (its own text spans several)
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = ": ".join(filter(None, (getattr(err, "context", None), getattr(err, "problem", None))))
        raise error(f"{where}: invalid YAML: {problem or str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


@dataclass
class RawConfig:
    """A composed config before validation, and where each key's value came from, for error messages."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[tuple[str, ...], str] = field(default_factory=dict)
    """Dotted key path -> the file or `--set` argument that set it last."""

    def merged(self, values: dict[str, Any], origin: str) -> RawConfig:
        """These values with `values` (from `origin`) merged over them."""
        return self.layered(RawConfig(values, _key_origins(values, origin)))

    def layered(self, layer: RawConfig) -> RawConfig:
        return RawConfig(_deep_merge(self.values, layer.values), {**self.origins, **layer.origins})


def _key_origins(values: dict[str, Any], origin: str, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    origins = {}
    for key, value in values.items():
        path = (*prefix, str(key))
        origins[path] = origin
        if isinstance(value, dict):
            origins.update(_key_origins(value, origin, path))
    return origins


def load_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> RawConfig:
    """Read a YAML config and resolve its `base:` chain (paths relative to the file naming them)."""
    resolved = Path(path).resolve()
    if resolved in _chain:
        raise ConfigError(f"{resolved}: `base:` chain loops back: " + " -> ".join(str(p) for p in (*_chain, resolved)))
    data = read_yaml_mapping(resolved)
    base = data.pop("base", None)
    if base is None:
        return RawConfig().merged(data, str(path))
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `base` must be a file path, got {base!r}")
    base_path = Path(path).parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base_path} not found (a base is relative to the file that names it)")
    return load_raw(base_path, (*_chain, resolved)).merged(data, str(path))


def parse_override(item: str, origin: str = "--set") -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (["train", "lr"], 1e-4); the value is read as YAML so lists and numbers work. `origin`
    names where the override was written in errors (`--set`, an experiment's `overrides`)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{origin} {item!r}: expected key=value, e.g. train.lr=1e-4")
    if not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"{origin} {item!r}: the key {key.strip()!r} has an empty part; e.g. train.lr=1e-4")
    try:
        parsed = load_yaml(value) if value.strip() else None
    except yaml.YAMLError as err:
        # Only marked errors (scanner, parser) carry `problem`; a reader error (a control character) says it first.
        problem = err.problem if isinstance(err, yaml.MarkedYAMLError) else str(err).splitlines()[0]
        raise ConfigError(f"{origin} {item!r}: the value is not valid YAML: {problem}") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: RawConfig, overrides: list[str], origin: str = "--set") -> RawConfig:
    for item in overrides:
        keys, value = parse_override(item, origin)
        nested: dict[str, Any] = {keys[-1]: value}
        for key in reversed(keys[:-1]):
            nested = {key: nested}
        raw = raw.merged(nested, f"{origin} {item}")
    return raw


def _section_fields(root: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """Every key name -> the dotted sections that hold it ('' for a top-level key)."""
    holders: dict[str, tuple[str, ...]] = {name: ("",) for name in root.model_fields}
    for section, info in root.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            for name in info.annotation.model_fields:
                holders[name] = (*holders.get(name, ()), section)
    return holders


def _suggest(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """A key that exists in another section is pointed there; otherwise the nearest key of this section."""
    key = str(loc[-1])
    section = _section_model(root, loc)
    elsewhere = [holder for holder in _section_fields(root).get(key, ()) if holder != ".".join(map(str, loc[:-1]))]
    if elsewhere:
        places = " and ".join("a top-level key" if not holder else f"a key of `{holder}`" for holder in elsewhere)
        keys = " or ".join(f"`{holder + '.' if holder else ''}{key}`" for holder in elsewhere)
        return f"; {key} is {places}: set {keys}"
    close = difflib.get_close_matches(key, section.model_fields.keys(), n=1, cutoff=0.5)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _section_model(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    model: type[BaseModel] = root
    for part in loc[:-1]:
        info = model.model_fields.get(str(part))
        annotation = info.annotation if info else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return model


def _origin_note(raw: RawConfig, loc: tuple[str, ...], message: str, main: str, across_keys: bool) -> str:
    """` (from X)` when the value at fault came from another file or a `--set` argument than the main file.

    A check across a section's keys (`across_keys`: loc is the section) names the keys in its message; their origins
    are given.
    """
    exact = next((raw.origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in raw.origins), None)
    if exact is not None and not across_keys:
        origins = [exact]
    else:
        named = [
            path
            for path in raw.origins
            if path[: len(loc)] == loc
            and len(path) > len(loc)
            and not isinstance(_value_at(raw.values, path), dict)
            and re.search(rf"\b{re.escape('.'.join(path[len(loc) :]))}\b", message)
        ]
        origins = list(dict.fromkeys(raw.origins[path] for path in named))
    if not origins or origins == [main]:
        return ""
    return " (from " + ", ".join(origins) + ")"


def _value_at(values: Any, loc: tuple[str, ...]) -> Any:
    for part in loc:
        if not isinstance(values, dict) or part not in values:
            return None
        values = values[part]
    return values


def _annotation_at(root: type[BaseModel], loc: tuple[str, ...]) -> tuple[int, Any]:
    """How many parts of an error's `loc` lead to the value at fault, and that value's type: parts left over name
    the union member pydantic tried (`speed.offload_activations.bool` is about speed.offload_activations)."""
    annotation: Any = root
    depth = 0
    while depth < len(loc):
        part, origin = loc[depth], get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
            annotation = annotation.model_fields[part].annotation
        elif origin in (list, tuple) and part.isdigit():
            annotation = get_args(annotation)[0]
        elif origin is dict and loc[depth + 1 : depth + 2] == ("[key]",):
            return depth + 2, get_args(annotation)[0]
        elif origin is dict:
            annotation = get_args(annotation)[1]
        else:
            break
        depth += 1
    return depth, annotation


_KIND_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    tuple: "a list",
    dict: "a mapping",
}


def _accepted(annotation: Any) -> list[str] | None:
    """What a type accepts, as a YAML writer would say it (true, false, auto, null, an integer); None where some
    part of it has no short name."""
    if get_origin(annotation) is Literal:
        return [yaml.safe_dump(value).removesuffix("...\n").strip() for value in get_args(annotation)]
    if get_origin(annotation) in (Union, UnionType):
        members = [_accepted(member) for member in get_args(annotation)]
        if any(names is None for names in members):
            return None
        return list(dict.fromkeys(name for names in members for name in names or ()))
    if annotation is bool:
        return ["true", "false"]
    if annotation is type(None):
        return ["null"]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ["a mapping"]
    kind = _KIND_NAMES.get(get_origin(annotation) or annotation)
    return [kind] if kind else None


def _is_type_error(problem: ErrorDetails) -> bool:
    """The value is not of (one of) the field's types, as opposed to failing a check (a range, a validator)."""
    return problem["type"] == "literal_error" or problem["type"].endswith(("_parsing", "_type"))


def _one_problem_per_value(root: type[BaseModel], errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """A value of the wrong type is one problem at its key saying what is accepted (`expected true, false or auto`,
    `expected a mapping`), not pydantic's sentence or one per union member (`speed.offload_activations.bool`,
    `...literal['auto']`). A value of one member's type that fails that member's check (a range) keeps only that
    check's problem."""
    by_value: dict[tuple[str, ...], list[ErrorDetails]] = {}
    for problem in errors:
        loc = tuple(str(part) for part in problem["loc"])
        depth = len(loc) if problem["type"] == "extra_forbidden" else _annotation_at(root, loc)[0]
        by_value.setdefault(loc[:depth], []).append(problem)
    merged: list[ErrorDetails] = []
    for loc, problems in by_value.items():
        accepted = _accepted(_annotation_at(root, loc)[1])
        checks = [problem for problem in problems if not _is_type_error(problem)]
        if accepted and not checks:
            expected = accepted[0] if len(accepted) == 1 else f"{', '.join(accepted[:-1])} or {accepted[-1]}"
            if loc[-1:] == ("[key]",):  # a mapping's key: named at the mapping, as an unknown key is
                message = f"keys must be {expected}, got {problems[0]['input']!r}"
                merged.append({**problems[0], "loc": loc[:-2], "msg": message})
            else:
                merged.append({**problems[0], "loc": loc, "msg": f"expected {expected}"})
        else:
            merged.extend({**problem, "loc": loc} for problem in checks or problems)
    return merged


def validate(raw: RawConfig, source: str) -> RunConfig:
    """Validate a composed config, collecting every problem into one ConfigError.

    Each problem names the file or `--set` argument its value came from when that is not `source`.
    """
    try:
        return RunConfig.model_validate(raw.values)
    except ValidationError as err:
        problems = "\n".join(problem_lines(err, RunConfig, raw, source))
        raise ConfigError(f"{source}: invalid config:\n{problems}") from None


def problem_lines(err: ValidationError, root: type[BaseModel], raw: RawConfig, source: str) -> list[str]:
    """One indented line per problem of validating `raw` as `root` (a config, an experiment): the dotted key, what
    is wrong or what the key accepts, the value given, and where it came from when that is not `source`."""
    lines = []
    for problem in _one_problem_per_value(root, err.errors()):
        problem["msg"] = problem["msg"].removeprefix("Value error, ")
        loc = tuple(str(part) for part in problem["loc"])
        dotted = ".".join(loc) or "(top level)"
        across_keys = isinstance(problem.get("input"), dict) and not _is_type_error(problem)
        if problem["type"] == "extra_forbidden":
            line = f"{dotted}: unknown key{_suggest(root, loc)}"
        elif problem["type"] == "missing":
            line = f"{dotted}: missing (a required key)"
        elif across_keys:  # a check across a section's keys: its message names them
            line = f"{dotted}: {problem['msg']}"
        elif problem["msg"].endswith((f"got {problem.get('input')!r}", f"got {str(problem.get('input'))!r}")):
            # the check's message names the value (a YAML number, as the text it was read from)
            line = f"{dotted}: {problem['msg']}"
        else:
            line = f"{dotted}: {problem['msg']} (got {problem.get('input')!r})"
        lines.append(f"  {line}{_origin_note(raw, loc, problem['msg'], source, across_keys)}")
    return lines


def compose(
    path: str | Path | None, overlays: list[str | Path] | None = None, overrides: list[str] | None = None
) -> RawConfig:
    """The raw config: file (with its `base:` chain), then overlay files, then `--set` overrides."""
    raw = load_raw(path) if path is not None else RawConfig()
    for overlay in overlays or []:
        raw = raw.layered(load_raw(overlay))
    return apply_overrides(raw, overrides or [])


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, overlays: list[str | Path] | None = None
) -> RunConfig:
    """Load a config file (or the defaults when `path` is None), merge overlay files, apply `--set`, validate."""
    return validate(compose(path, overlays, overrides), str(path) if path is not None else "defaults")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys, as `--set` names them: {"train": {"lr": 1}} -> {"train.lr": 1}; lists stay
    values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


RESUME_MAY_CHANGE = (
    "output_dir",
    "train.logging_steps",
    "train.eval_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.report_to",
    "train.parallelism",
    "train.shard_optimizer",
    "train.gradient_checkpointing",
    "train.loss_chunk_tokens",
    "speed.",
)
"""Settings a resumed run may change: how it is carried out, logged and saved (or on which GPUs), not what it
computes. A key ending in "." stands for its whole section."""


def changes_on_resume(stored: dict[str, Any], cfg: RunConfig) -> list[str]:
    """`key: old -> new` for each setting of `cfg` that differs from the run's `stored` config and that a resumed
    run may not change (RESUME_MAY_CHANGE): continuing with them would train a run that no config describes.

    The stored config is read as this medtune reads a config, so a key added since the run was written takes its
    default, the setting that keeps the behaviour before it existed: an upgrade alone changes no run's config."""
    before, after = flatten(_as_current(stored)), flatten(cfg.model_dump(mode="json"))
    return [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
        and not any(
            key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in RESUME_MAY_CHANGE
        )
    ]


def _as_current(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config with this version's defaults filled in; as stored when this version cannot read it (a key
    since removed), so that every difference is listed."""
    try:
        return RunConfig.model_validate(stored).model_dump(mode="json")
    except ValidationError:
        return stored


def dump_config(cfg: RunConfig) -> str:
    text: str = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return text
