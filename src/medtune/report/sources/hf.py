"""What HF Trainer writes, in medtune's terms: metric key names and TrainingArguments.

SwanLab's and TensorBoard's Trainer callbacks log `train/loss`, `train/learning_rate`, `eval/loss`;
`trainer_state.json` has `loss`, `learning_rate`, `eval_loss`. Both become metrics.jsonl names here,
and TrainingArguments become the medtune config keys the analysis reads (train.lr, train.schedule, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

TRAINING_ARGS_TO_CONFIG = {
    "run_name": "run_name",
    "output_dir": "output_dir",
    "learning_rate": "train.lr",
    "lr_scheduler_type": "train.schedule",
    "warmup_ratio": "train.warmup_ratio",
    "max_grad_norm": "train.max_grad_norm",
    "weight_decay": "train.weight_decay",
    "per_device_train_batch_size": "train.per_device_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "seed": "train.seed",
    "logging_steps": "train.logging_steps",
    "eval_steps": "train.eval_steps",
    "save_steps": "train.save_steps",
}
"""TrainingArguments fields with a medtune counterpart; max_steps, epochs and warmup_steps need rules (below)."""

SCHEDULE_NAMES = {"constant_with_warmup": "constant"}
"""HF scheduler names that medtune calls differently (medtune's `constant` warms up when asked to)."""


def metric_name(tag: str) -> str:
    """`train/loss` -> `loss`, `eval/loss` -> `eval_loss`, `train/train_runtime` -> `train_runtime`."""
    section, _, rest = tag.partition("/")
    if not rest:
        return tag
    if section == "eval":
        return f"eval_{rest}"
    if section == "train":
        return rest
    return tag.replace("/", "_")


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


def config_from_training_args(args: dict[str, Any]) -> dict[str, Any]:
    """TrainingArguments (as `to_dict()` gives them) to a medtune-shaped config; all other fields stay under `training_args`."""
    config: dict[str, Any] = {}
    for hf_key, dotted in TRAINING_ARGS_TO_CONFIG.items():
        if args.get(hf_key) is not None:
            value = args[hf_key]
            if hf_key == "lr_scheduler_type":
                value = SCHEDULE_NAMES.get(str(value), str(value))
            _put(config, dotted, value)
    if isinstance(args.get("max_steps"), int) and args["max_steps"] > 0:
        _put(config, "train.max_steps", args["max_steps"])
    elif args.get("num_train_epochs") is not None:
        _put(config, "train.epochs", args["num_train_epochs"])
    warmup = args.get("warmup_steps")
    if isinstance(warmup, (int, float)) and warmup:
        # transformers 5 reads a warmup_steps below 1 as a ratio of the training steps
        _put(config, "train.warmup_ratio" if warmup < 1 else "train.warmup_steps", warmup if warmup < 1 else int(warmup))
    handled = set(TRAINING_ARGS_TO_CONFIG) | {"max_steps", "num_train_epochs", "warmup_steps"}
    config["training_args"] = {key: value for key, value in args.items() if key not in handled}
    return config


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value
