"""What HF Trainer writes, in medtune's terms: metric key names, TrainingArguments, model and PEFT configs.

SwanLab's and TensorBoard's Trainer callbacks log `train/loss`, `train/learning_rate`, `eval/loss`;
`trainer_state.json` has `loss`, `learning_rate`, `eval_loss`. Both become metrics.jsonl names here.
TrainingArguments, the model's config and the LoRA config become medtune's nested keys (`train.lr`,
`train.schedule`, `lora.dropout`, ...), so a version table of imported runs reads like one of medtune runs;
what has no counterpart stays under `hf.` and the importers keep the untouched original in `Run.imported_config`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from medtune.report.inputs import Note, is_number
from medtune.report.sources.python_repr import NotARepr, looks_like_call_repr, parse_repr

FOREIGN_SECTION = "hf"
"""Config section for foreign keys without a medtune counterpart (`hf.optim`, `hf.peft.use_dora`): kept, so that a
difference in them still shows in the versions table."""
KEPT_UNDER = f"{FOREIGN_SECTION}.peft_config"
"""Where a LoRA config that cannot be mapped onto `lora.*` (or the adapters not mapped) is kept."""
TRAINING_ARGS_TO_CONFIG = {
    "run_name": "run_name",
    "output_dir": "output_dir",
    "learning_rate": "train.lr",
    "max_grad_norm": "train.max_grad_norm",
    "weight_decay": "train.weight_decay",
    "per_device_train_batch_size": "train.per_device_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "seed": "train.seed",
    "logging_steps": "train.logging_steps",
    "eval_steps": "train.eval_steps",
    "save_steps": "train.save_steps",
    "max_seq_length": "data.max_length",  # TRL's SFTConfig before it was renamed max_length
    "_name_or_path": "model.name_or_path",  # from the model's config, which HF's SwanLab callback merges in
}
"""TrainingArguments (and model config) fields that are a medtune key as they are; the others need the rules below."""
LORA_TO_CONFIG = {
    "r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "target_modules": "lora.target_modules",
    "modules_to_save": "lora.modules_to_save",
}
"""PEFT LoraConfig / adapter_config.json fields -> medtune keys."""
SCHEDULE_NAMES = {"linear": "linear", "cosine": "cosine", "constant_with_warmup": "constant", "constant": "constant"}
"""HF scheduler -> medtune schedule (medtune's `constant` warms up when asked to; HF's `constant` never does)."""
OPTIMIZER_NAMES = {
    "paged_adamw_8bit": "paged_adamw_8bit",
    "adamw_bnb_8bit": "adamw_8bit",
    "adamw_8bit": "adamw_8bit",
    "adamw_torch": "adamw",
    "adamw_torch_fused": "adamw",
    "adamw_hf": "adamw",
}
DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
"""torch dtype names (as `str(torch.bfloat16)` less `torch.`) -> medtune's quant.compute_dtype names."""


METRIC_ALIASES = {"lr": "learning_rate"}
"""Metric names that scripts and trackers often log instead of metrics.jsonl's (`train/lr`, `lr`)."""


def metric_name(tag: str) -> str:
    """`train/loss` -> `loss`, `eval/loss` -> `eval_loss`, `train/train_runtime` -> `train_runtime`, `train/lr` ->
    `learning_rate`."""
    section, _, rest = tag.partition("/")
    if not rest:
        name = tag
    elif section == "eval":
        name = f"eval_{rest}"
    elif section == "train":
        name = rest
    else:
        name = tag.replace("/", "_")
    return METRIC_ALIASES.get(name, name)


def records_from_points(points: Iterable[tuple[str, int, float]]) -> list[dict[str, Any]]:
    """(tag, step, value) triples to metrics.jsonl-style records: one train and one eval record per step."""
    grouped: dict[tuple[int, bool], dict[str, Any]] = {}
    for tag, step, value in points:
        key = metric_name(tag)
        record = grouped.setdefault((int(step), key.startswith("eval_")), {"step": int(step)})
        record[key] = value
    for record in grouped.values():
        record.setdefault("epoch", None)
    return [grouped[key] for key in sorted(grouped)]


def is_training_args(values: dict[str, Any]) -> bool:
    return "learning_rate" in values and "lr_scheduler_type" in values


def config_from_hf(values: dict[str, Any], file: str) -> tuple[dict[str, Any], list[Note]]:
    """TrainingArguments (as `to_dict()` gives them) to medtune's nested config keys, and notes on what has no
    counterpart.

    `values` may also hold the model's config and a `peft_config`, as HF's SwanLab callback merges them in;
    keys without a medtune counterpart go under `hf.`; every note names `file`, where the values came from.
    """
    rest = dict(values)
    config: dict[str, Any] = {}
    notes: list[Note] = []
    for hf_key, dotted in TRAINING_ARGS_TO_CONFIG.items():
        if rest.get(hf_key) is not None:
            _put(config, dotted, rest.pop(hf_key))
    if config.get("train", {}).get("max_grad_norm") == 0:
        config["train"]["max_grad_norm"] = None  # HF's 0 and medtune's null both mean no clipping
    _map_length(rest, config)
    _map_schedule(rest, config, notes, file)
    _map_optimizer(rest, config, notes, file)
    _map_precision(rest, config)
    if "peft_config" in rest:
        map_lora(rest.pop("peft_config"), config, notes, {"file": file, "key": "peft_config"})
    for key, value in rest.items():
        _put(config, f"{FOREIGN_SECTION}.{key}", value)
    return config, notes


def map_lora(value: Any, config: dict[str, Any], notes: list[Note], where: dict[str, str]) -> None:
    """A PEFT adapter config into `lora.*`: a dict (adapter_config.json), `{adapter: config}`, or their repr strings.

    `where` (`file`, and `key` when the config is one key of that file) starts every note's fields."""
    value = _parsed(value, notes, where)
    if isinstance(value, dict) and value and "r" not in value:  # {adapter name: config}, as PeftModel.peft_config
        name = "default" if "default" in value else next(iter(value))
        if len(value) > 1:
            notes.append(
                Note("adapters_other", {**where, "adapters": list(value), "chosen": name, "kept_under": KEPT_UNDER})
            )
            _put(config, KEPT_UNDER, {key: item for key, item in value.items() if key != name})
        value = _parsed(value[name], notes, where)
    if not isinstance(value, dict):
        if not looks_like_call_repr(value):  # a repr that failed to parse has its note already
            notes.append(Note("not_lora_config", {**where, "value": str(value)[:80], "kept_under": KEPT_UNDER}))
        _put(config, KEPT_UNDER, value)
        return
    for peft_key, value_of_key in value.items():
        if peft_key in ("target_modules", "modules_to_save"):
            value_of_key = _module_names(value_of_key)
        _put(config, LORA_TO_CONFIG.get(peft_key, f"{FOREIGN_SECTION}.peft.{peft_key}"), value_of_key)


def _parsed(value: Any, notes: list[Note], where: dict[str, str]) -> Any:
    """A repr string read into dicts (see python_repr); anything else, or a string that is no repr, as it is."""
    if not looks_like_call_repr(value):
        return value
    try:
        parsed, unreadable = parse_repr(value)
    except NotARepr as err:
        notes.append(
            Note("repr_syntax", {**where, "error": err.syntax, "column": err.column, "kept_under": KEPT_UNDER})
            if err.syntax
            else Note("repr_too_deep", {**where, "kept_under": KEPT_UNDER})
        )
        return value
    notes.extend(Note("repr_not_literal", {**where, "text": text}) for text in unreadable)
    return parsed


def _module_names(value: Any) -> Any:
    """Module lists sorted (PEFT keeps them as sets, whose order changes between processes); none is an empty list."""
    if value is None:
        return []
    return sorted(value) if isinstance(value, (list, tuple, set)) else value  # a string is PEFT's regex form


def _map_length(rest: dict[str, Any], config: dict[str, Any]) -> None:
    """Planned length: max_steps when set (> 0), else epochs; warmup in steps (>= 1) or as a ratio."""
    max_steps, epochs = rest.pop("max_steps", None), rest.pop("num_train_epochs", None)
    if is_number(max_steps) and max_steps > 0:
        _put(config, "train.max_steps", int(max_steps))
    elif is_number(epochs) and epochs > 0:
        _put(config, "train.epochs", epochs)
    warmup_steps, warmup_ratio = rest.pop("warmup_steps", None), rest.pop("warmup_ratio", None)
    if is_number(warmup_steps) and warmup_steps >= 1:  # HF: warmup_steps > 0 overrides warmup_ratio
        _put(config, "train.warmup_steps", int(warmup_steps))
    elif is_number(warmup_steps) and warmup_steps > 0:  # transformers 5 reads a warmup_steps below 1 as a ratio
        _put(config, "train.warmup_ratio", warmup_steps)
    elif is_number(warmup_ratio):
        _put(config, "train.warmup_ratio", warmup_ratio)
    if (
        rest.get("max_length") is not None and "dataset_text_field" in rest
    ):  # TRL's SFTConfig; a model config's max_length is generation's
        _put(config, "data.max_length", rest.pop("max_length"))


def _map_schedule(rest: dict[str, Any], config: dict[str, Any], notes: list[Note], file: str) -> None:
    if rest.get("lr_scheduler_type") is None:
        return
    name = str(rest.pop("lr_scheduler_type")).removeprefix("SchedulerType.").lower()
    schedule = SCHEDULE_NAMES.get(name)
    if schedule is None:
        notes.append(Note("schedule_unknown", {"file": file, "key": "lr_scheduler_type", "value": name}))
    _put(config, "train.schedule", schedule or name)
    warmup = config.get("train", {})
    if name == "constant" and (warmup.get("warmup_steps") or warmup.get("warmup_ratio")):
        notes.append(Note("constant_ignores_warmup", {"file": file, "key": "lr_scheduler_type"}))
        warmup.pop("warmup_steps", None)
        warmup["warmup_ratio"] = 0.0


def _map_optimizer(rest: dict[str, Any], config: dict[str, Any], notes: list[Note], file: str) -> None:
    if rest.get("optim") is not None:
        name = str(rest.pop("optim")).removeprefix("OptimizerNames.").lower()
        if name not in OPTIMIZER_NAMES:
            notes.append(Note("optimizer_unknown", {"file": file, "key": "optim", "value": name}))
        _put(config, "train.optimizer", OPTIMIZER_NAMES.get(name, name))
    if is_number(rest.get("adam_beta1")) and is_number(rest.get("adam_beta2")):
        _put(config, "train.betas", [rest.pop("adam_beta1"), rest.pop("adam_beta2")])


def _map_precision(rest: dict[str, Any], config: dict[str, Any]) -> None:
    """bf16/fp16 autocast -> speed.mixed_precision; the model config's quantization_config -> quant.*."""
    if "bf16" in rest or "fp16" in rest:
        bf16, fp16 = rest.pop("bf16", False), rest.pop("fp16", False)
        _put(config, "speed.mixed_precision", "bf16" if bf16 else "fp16" if fp16 else "none")
    quantization = rest.pop("quantization_config", None)
    if not isinstance(quantization, dict):
        if "model_type" in rest:  # the model's config is there and says nothing of quantization
            _put(config, "quant.mode", "none")
        if quantization is not None:
            _put(config, f"{FOREIGN_SECTION}.quantization_config", quantization)
        return
    quantization = dict(quantization)
    if quantization.pop("load_in_4bit", False):
        _put(config, "quant.mode", str(quantization.pop("bnb_4bit_quant_type", "fp4")))  # bitsandbytes' default
    elif quantization.pop("load_in_8bit", False):
        _put(config, "quant.mode", "int8")
    else:
        _put(config, "quant.mode", str(quantization.get("quant_method", "unknown")))
    if "bnb_4bit_use_double_quant" in quantization:
        _put(config, "quant.double_quant", quantization.pop("bnb_4bit_use_double_quant"))
    dtype = str(quantization.pop("bnb_4bit_compute_dtype", "") or "").removeprefix("torch.")
    if dtype:
        _put(config, "quant.compute_dtype", DTYPE_NAMES.get(dtype, dtype))
    for key, value in quantization.items():
        _put(config, f"{FOREIGN_SECTION}.quantization_config.{key}", value)


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value
