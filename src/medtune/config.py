"""Typed run configuration: YAML files with `base:` inheritance, dotted `--set` overrides, strict validation.

Every key has a default here and nowhere else; recipe code reads attributes, never `cfg.get(key, default)`,
so a misspelt key is an error (with the nearest valid key suggested) instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REFERENCE_SYSTEM_PROMPT = "你是一个医学专家，你需要根据用户的问题，给出带有思考的回答。"
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and every bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name_or_path: str = Field("tiny", description="Hub id (Qwen/Qwen3-1.7B), local folder, `modelscope:<id>`, or `tiny` (offline random-weight Qwen3).")
    gguf_file: str | None = Field(None, description="GGUF file inside name_or_path (or a path), de-quantised by transformers.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Kept off: Qwen3 is native to transformers.")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = "auto"


class QuantConfig(_Strict):
    mode: Literal["nf4", "fp4", "none"] = Field("nf4", description="4-bit base weights through bitsandbytes, or none.")
    double_quant: bool = True
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto = bf16 on CUDA (the reference experiment's), fp32 on CPU, where bf16 matmuls are several times slower."
    )


class LoraSettings(_Strict):
    r: int = Field(64, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_PROJECTIONS))
    modules_to_save: list[str] = Field(default_factory=list, description="Modules trained in full, e.g. [embed_tokens, lm_head].")
    tied_embeddings: Literal["keep", "untie"] = Field(
        "keep", description="When embed_tokens and lm_head are both trained on a tied model: keep them one matrix, or untie on purpose."
    )


class DataConfig(_Strict):
    train: str = Field("medtune:delicate_medical_r1_val", description="JSONL/JSON/Parquet file, or `medtune:<name>` for shipped data.")
    validation: str | None = Field(None, description="Validation file; when absent, a seeded `val_fraction` of train.")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    format: Literal["auto", "qta", "alpaca", "messages"] = "auto"
    system_prompt: str = REFERENCE_SYSTEM_PROMPT
    max_length: int = Field(2048, gt=16)
    skip_bad_rows: bool = Field(False, description="Skip invalid rows (counted and listed in data_stats.json) instead of stopping.")
    max_rows: int | None = Field(None, gt=0, description="Use only the first N rows of each file (quick runs).")


class AugmentConfig(_Strict):
    """The v3 medical-term masking augmentation (`data/augment.py`), drawn afresh at batch-building time."""

    enabled: bool = False
    preset: Literal["none", "reference-compatible"] = Field(
        "none", description="reference-compatible = the reference experiment's masking; it fixes every key below but probability."
    )
    probability: float = Field(0.1, ge=0, le=1, description="Share of the samples drawn that get terms masked (if they contain any).")
    terms_per_sample: tuple[int, int] = Field((1, 2), description="[low, high]: distinct terms masked per masked sample, drawn uniformly.")
    mask_styles: list[str] = Field(
        default_factory=lambda: ["[MASK]", "[{category}]", "..."],
        description="Chosen uniformly per term; `{category}` becomes the term's category tag, e.g. [症状].",
    )
    fields: list[Literal["question", "think", "answer"]] = Field(
        default_factory=lambda: ["question"], description="Where terms are masked; the question is prompt, so masks there never touch the loss."
    )
    occurrence: Literal["first", "all"] = Field("first", description="Replace a chosen term's first occurrence in the field, or all of them.")
    mask_loss: Literal["exclude", "include"] = Field(
        "exclude", description="exclude = masks in think/answer are left out of the loss, so the model never learns to write them."
    )
    lexicon: str = Field("medical", description="`medical` (shipped), `reference` (the reference experiment's 12 words) or a file path.")
    redraw_every_epoch: bool = Field(
        True, description="Draw masks afresh each epoch; false = decide once per sample, as masking at data preparation does."
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill in the reference experiment's values; a key set to something else is an error, not silently overridden."""
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
            raise ValueError("preset reference-compatible fixes " + "; ".join(conflicts) + ". Remove these keys or set preset: none")
        return {**data, **reference}

    @model_validator(mode="after")
    def _check_range(self) -> "AugmentConfig":
        low, high = self.terms_per_sample
        if not 1 <= low <= high:
            raise ValueError(f"terms_per_sample must be [low, high] with 1 <= low <= high, got {list(self.terms_per_sample)}")
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
    seed: int = 42
    gradient_checkpointing: bool = True
    packing: bool = Field(True, description="Pack a step's samples into rows; attention stays inside each sample.")
    loss_chunk_tokens: int = Field(1024, gt=0, description="Tokens per chunk of the fused lm_head + cross-entropy.")
    logging_steps: int = Field(10, gt=0)
    eval_steps: int | None = Field(100, gt=0)
    save_steps: int = Field(400, gt=0)
    save_total_limit: int = Field(2, gt=0)
    report_to: list[Literal["swanlab", "tensorboard", "wandb"]] = Field(default_factory=list)
    parallelism: Literal["ddp", "fsdp"] = Field(
        "ddp", description="With several processes: ddp = every process holds the whole model; fsdp = decoder layers "
        "sharded across processes (FSDP2 + QLoRA), for Qwen3 sizes that do not fit one GPU. Launched the same way; "
        "one process trains alike with either.",
    )

    @model_validator(mode="after")
    def _check_length(self) -> "TrainConfig":
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
        return math.ceil(self.epochs * train_rows / self.samples_per_step())

    def resolved_optimizer(self, device_type: str, fsdp: bool) -> str:
        """auto: paged 8-bit AdamW on CUDA (the reference), torch AdamW on CPU and under FSDP."""
        if self.optimizer != "auto":
            return self.optimizer
        return "paged_adamw_8bit" if device_type == "cuda" and not fsdp else "adamw"


class SpeedConfig(_Strict):
    """GPU speed levers (`model/speed.py`). None changes the math; each falls back cleanly where it is unsupported."""

    packed_attention: Literal["auto", "varlen", "per_sample", "mask"] = Field(
        "auto",
        description="How attention stays inside each sample of a packed row: varlen = one flash-attention call over the "
        "row (CUDA), per_sample = one SDPA call per sample (any device), mask = the model's own attention with the "
        "block-diagonal mask transformers builds from position_ids. auto = varlen where it works, else per_sample.",
    )
    mixed_precision: Literal["auto", "bf16", "none"] = Field(
        "auto",
        description="bf16 autocast of the forward pass, as HF Trainer's bf16=True: LoRA matmuls run in bf16 on fp32 "
        "adapter weights. auto = on when the base computes in bf16 (CUDA).",
    )
    fused_kernels: Literal["auto", "liger", "none"] = Field(
        "auto", description="Liger's fused RMSNorm, SwiGLU and RoPE kernels. auto = on with CUDA and the liger-kernel package."
    )
    checkpoint_fraction: float = Field(
        0.75, ge=0, le=1,
        description="Share of decoder layers that recompute their activations in the backward pass when "
        "train.gradient_checkpointing is on; the others keep them (a little faster, more memory: about 1.1 GiB per kept "
        "Qwen3-1.7B layer in a 12,900-token row). 0.75 keeps v1/v2 under the reference stack's peak memory; 1.0 "
        "halves it at a few per cent of speed (bench/RESULTS.md).",
    )
    packed_row_tokens: int | None = Field(
        16384, gt=0,
        description="With train.packing, a packed row (one forward pass) holds up to this many tokens, so a step of a few "
        "thousand tokens runs as one pass instead of several: the step is bound by the host's launch work per pass, not by "
        "the GPU (bench/RESULTS.md). Activation memory grows with it. null = per_device_batch_size x data.max_length.",
    )
    fused_lora: bool = Field(
        True, description="Each LoRA projection, its 4-bit base matmul included, as one autograd function "
        "(model/lora_fused.py): a fraction of the host work of PEFT + bitsandbytes per projection, the NF4 weight "
        "dequantized in one kernel, and only the dropout mask kept for the backward pass instead of a dropped-out copy of "
        "the input. Same math as PEFT's forward; any device. false = PEFT's own forward.",
    )


class RunConfig(_Strict):
    run_name: str = "run"
    output_dir: str = "runs"
    model: ModelConfig = Field(default_factory=ModelConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    speed: SpeedConfig = Field(default_factory=SpeedConfig)

    @model_validator(mode="after")
    def _check_row(self) -> "RunConfig":
        rows = self.speed.packed_row_tokens
        if self.train.packing and rows is not None and rows < self.data.max_length:
            raise ValueError(f"speed.packed_row_tokens ({rows}) is below data.max_length ({self.data.max_length}): "
                             "a sample of max_length tokens would not fit a row")
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


def read_yaml_mapping(path: Path, kind: str = "config") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; every failure is a ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {kind} file not found") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config and resolve its `base:` chain (paths relative to the file naming them)."""
    path = Path(path).resolve()
    if path in _chain:
        raise ConfigError(f"{path}: `base:` chain loops back: " + " -> ".join(str(p) for p in (*_chain, path)))
    data = read_yaml_mapping(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `base` must be a file path, got {base!r}")
    return _deep_merge(load_raw(path.parent / base, (*_chain, path)), data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (["train", "lr"], 1e-4); the value is read as YAML so lists and numbers work."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=1e-4")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = dict(data)
    for item in overrides:
        keys, value = parse_override(item)
        nested: dict[str, Any] = {keys[-1]: value}
        for key in reversed(keys[:-1]):
            nested = {key: nested}
        data = _deep_merge(data, nested)
    return data


def _suggest(section: type[BaseModel], key: str) -> str:
    close = difflib.get_close_matches(key, section.model_fields.keys(), n=1, cutoff=0.5)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel]:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return model


def validate(data: dict[str, Any], source: str) -> RunConfig:
    """Validate a merged config dict, collecting every problem into one ConfigError."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            loc = problem["loc"]
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            if problem["type"] == "extra_forbidden":
                lines.append(f"  {dotted}: unknown key{_suggest(_section_model(loc), str(loc[-1]))}")
            elif isinstance(problem.get("input"), dict):  # a check across a section's keys: its message names them
                lines.append(f"  {dotted}: {problem['msg']}")
            else:
                lines.append(f"  {dotted}: {problem['msg']} (got {problem.get('input')!r})")
        raise ConfigError(f"{source}: invalid config:\n" + "\n".join(lines)) from None


def compose(path: str | Path | None, overlays: list[str | Path] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw config: file (with its `base:` chain), then overlay files, then `--set` overrides."""
    data = load_raw(path) if path is not None else {}
    for overlay in overlays or []:
        data = _deep_merge(data, load_raw(overlay))
    return apply_overrides(data, overrides or [])


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, overlays: list[str | Path] | None = None
) -> RunConfig:
    """Load a config file (or the defaults when `path` is None), merge overlay files, apply `--set`, validate."""
    return validate(compose(path, overlays, overrides), str(path) if path is not None else "defaults")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
