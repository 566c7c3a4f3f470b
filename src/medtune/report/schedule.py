"""The LR a run should have logged, from its config alone, to check that the schedule was the one configured.

The formulas are those of `transformers.get_scheduler` (linear, cosine, constant_with_warmup), written out
here so the check does not share code with the trainer it checks and needs no torch import.
Trainers disagree on which LR they log at step s: medtune and transformers 5 log the LR that step s used
(multiplier at s - 1), transformers 4.x the LR after step s (multiplier at s). Both are tried; the better fit wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medtune.report.inputs import Run

SCHEDULES = ("linear", "cosine", "constant")
CONVENTIONS = {"used_by_step": 1, "after_step": 0}
"""Logged-LR convention -> how many steps to subtract before applying the multiplier."""


@dataclass(frozen=True)
class ScheduleSpec:
    schedule: str
    peak_lr: float
    warmup_steps: int
    total_steps: int


def schedule_spec(run: Run) -> tuple[ScheduleSpec | None, str]:
    """The run's schedule, or None and a reason code (a wording key suffix) saying what the config lacks."""
    schedule, peak_lr, total = run.setting("train.schedule"), run.setting("train.lr"), run.max_steps()
    if schedule is None:
        return None, "no_schedule"
    if schedule not in SCHEDULES:
        return None, "unknown_schedule"
    if not isinstance(peak_lr, (int, float)) or peak_lr <= 0:
        return None, "no_lr"
    if total is None:
        return None, "no_total"
    return ScheduleSpec(str(schedule), float(peak_lr), configured_warmup(run) or 0, total), ""


def configured_warmup(run: Run) -> int | None:
    """Warmup steps from the config (warmup_steps, else warmup_ratio x planned steps), None when it cannot say."""
    explicit, ratio = run.setting("train.warmup_steps"), run.setting("train.warmup_ratio")
    if isinstance(explicit, (int, float)) and explicit > 0:
        return int(explicit)
    if isinstance(ratio, (int, float)) and ratio > 0:
        total = run.max_steps()
        return math.ceil(total * float(ratio)) if total else None  # TrainingArguments.get_warmup_steps
    return 0 if explicit is not None or ratio is not None else None


def multiplier(spec: ScheduleSpec, steps: np.ndarray) -> np.ndarray:
    """LR / peak LR after `steps` scheduler steps, as transformers' lr_lambda functions compute it."""
    steps = np.asarray(steps, dtype=float)
    warmup = steps / max(1, spec.warmup_steps)
    progress = (steps - spec.warmup_steps) / max(1, spec.total_steps - spec.warmup_steps)
    if spec.schedule == "linear":
        decay = np.maximum(0.0, (spec.total_steps - steps) / max(1, spec.total_steps - spec.warmup_steps))
    elif spec.schedule == "cosine":
        decay = np.maximum(0.0, 0.5 * (1.0 + np.cos(math.pi * progress)))
    else:
        decay = np.ones_like(steps)
    return np.where(steps < spec.warmup_steps, warmup, decay)


def check_schedule(run: Run, tolerance: float) -> dict[str, object]:
    """Compare the logged LR with the configured schedule; deviations are relative to the peak LR."""
    spec, reason = schedule_spec(run)
    steps, logged = run.series("learning_rate")
    if spec is None or not len(steps):
        return {"checked": False, "reason": reason or "no_lr_logged", "schedule": run.setting("train.schedule")}
    fits = {}
    for convention, offset in CONVENTIONS.items():
        expected = spec.peak_lr * multiplier(spec, np.maximum(steps - offset, 0))
        deviation = np.abs(logged - expected) / spec.peak_lr
        fits[convention] = (float(deviation.max()), int(steps[int(deviation.argmax())]))
    convention = min(fits, key=lambda name: fits[name][0])
    worst, worst_step = fits[convention]
    return {
        "checked": True,
        "schedule": spec.schedule,
        "peak_lr": spec.peak_lr,
        "warmup_steps": spec.warmup_steps,
        "total_steps": spec.total_steps,
        "convention": convention,
        "max_deviation": worst,
        "max_deviation_step": worst_step,
        "matches": worst <= tolerance,
    }
