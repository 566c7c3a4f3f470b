"""LR schedules: transformers' own schedule functions, so values match HF Trainer runs step for step."""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

from medtune.config import TrainConfig


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """HF TrainingArguments.get_warmup_steps: explicit steps win, else ceil(ratio x total)."""
    return cfg.warmup_steps if cfg.warmup_steps else math.ceil(total_steps * cfg.warmup_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.schedule]
    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup_steps(cfg, total_steps), num_training_steps=total_steps
    )
