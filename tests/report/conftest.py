"""Fabricated but realistic medtune run folders, written from formulas so tests can recompute every number.

Three versions like the reference experiment (v1 linear/no warmup, v2 cosine + 10% warmup + dropout 0.1 +
embed_tokens/lm_head, v3 = v2 + term masking). Loss curves decay exponentially with seed noise, grad norms
are log-normal with a version-specific spread, and the LR follows the configured schedule as medtune logs it
(the LR the step used). v3 logs every 15 steps, so 100/200/300 are not logged and the nearest step is used.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from medtune.config import RunConfig

MAX_STEPS = 400
PEAK_LR = 2e-4
MAX_GRAD_NORM = 0.3
EVAL_EVERY = 100

VERSION_SETTINGS = {
    "v1": {"lora": {"dropout": 0.05, "modules_to_save": []}, "train": {"schedule": "linear", "warmup_ratio": 0.0}},
    "v2": {
        "lora": {"dropout": 0.1, "modules_to_save": ["embed_tokens", "lm_head"]},
        "train": {"schedule": "cosine", "warmup_ratio": 0.1},
    },
    "v3": {
        "lora": {"dropout": 0.1, "modules_to_save": ["embed_tokens", "lm_head"]},
        "train": {"schedule": "cosine", "warmup_ratio": 0.1},
        "augment": {"enabled": True, "preset": "reference-compatible"},
    },
}
CURVES = {  # time constant of the loss decay, grad-norm log-sd, logging interval
    "v1": {"tau": 120.0, "grad_sd": 0.35, "logging": 10},
    "v2": {"tau": 85.0, "grad_sd": 0.25, "logging": 10},
    "v3": {"tau": 90.0, "grad_sd": 0.2, "logging": 15},
}


@dataclass
class FabricatedRun:
    version: str
    seed: int
    folder: Path
    steps: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    learning_rate: np.ndarray
    eval_steps: np.ndarray
    eval_loss: np.ndarray
    config: dict[str, Any]
    augment: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)


def expected_lr(schedule: str, warmup_ratio: float, steps: np.ndarray) -> np.ndarray:
    """The LR medtune logs at step s: the one step s used, i.e. the schedule after s - 1 updates."""
    done = steps - 1.0
    warmup = math.ceil(warmup_ratio * MAX_STEPS)
    progress = (done - warmup) / (MAX_STEPS - warmup)
    decayed = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + np.cos(np.pi * progress))
    return PEAK_LR * np.where(done < warmup, done / max(warmup, 1), decayed)


def fabricate_run(
    root: Path, version: str, seed: int, run_name: str | None = None, random_weights: bool = True
) -> FabricatedRun:
    curve = CURVES[version]
    rng = np.random.default_rng(1000 * int(version[1:]) + seed)
    steps = np.arange(curve["logging"], MAX_STEPS + 1, curve["logging"])
    if steps[-1] != MAX_STEPS:
        steps = np.append(steps, MAX_STEPS)  # medtune always logs the last step
    offset = rng.normal(0, 0.015)
    loss = 1.2 + 1.8 * np.exp(-steps / curve["tau"]) + offset + rng.normal(0, 0.02, len(steps))
    grad_norm = 0.22 * (1 + 2 * np.exp(-steps / 30)) * np.exp(rng.normal(0, curve["grad_sd"], len(steps)))
    settings = VERSION_SETTINGS[version]
    learning_rate = expected_lr(settings["train"]["schedule"], settings["train"]["warmup_ratio"], steps)
    eval_steps = np.arange(EVAL_EVERY, MAX_STEPS + 1, EVAL_EVERY)
    eval_loss = (
        1.3
        + 1.8 * np.exp(-eval_steps / curve["tau"])
        + offset
        + 0.0002 * eval_steps
        + rng.normal(0, 0.01, len(eval_steps))
    )

    name = run_name or f"{version}-seed{seed}"
    config = RunConfig.model_validate(
        {
            "run_name": name,
            "model": {"name_or_path": "tiny"},
            "train": {
                **settings["train"],
                "seed": seed,
                "lr": PEAK_LR,
                "max_grad_norm": MAX_GRAD_NORM,
                "max_steps": MAX_STEPS,
                "logging_steps": curve["logging"],
                "eval_steps": EVAL_EVERY,
            },
            "lora": settings["lora"],
            "augment": settings.get("augment", {}),
        }
    ).model_dump(mode="json")

    records: list[dict[str, Any]] = []
    for step in sorted(set(steps.tolist()) | set(eval_steps.tolist())):
        if step in steps:
            index = int(np.where(steps == step)[0][0])
            records.append(
                {
                    "step": step,
                    "epoch": round(step / 200, 4),
                    "loss": float(loss[index]),
                    "loss_think": float(loss[index]) + 0.1,
                    "loss_answer": float(loss[index]) - 0.1,
                    "grad_norm": float(grad_norm[index]),
                    "grad_norm_max": float(grad_norm[index]) * 1.3,
                    "learning_rate": float(learning_rate[index]),
                    "tokens_seen": 4000 * step,
                    "tokens_per_s": 900.0,
                    "peak_memory_gib": 1.5,
                    "elapsed_s": 4.4 * step,
                }
            )
        if step in eval_steps:
            index = int(np.where(eval_steps == step)[0][0])
            records.append(
                {
                    "step": step,
                    "epoch": round(step / 200, 4),
                    "eval_loss": float(eval_loss[index]),
                    "eval_loss_think": None,
                    "eval_loss_answer": None,
                    "eval_tokens": 20000,
                }
            )
    augment = []
    if settings.get("augment"):
        for epoch, step in ((0, 200), (1, 400)):
            samples, masked = 800, int(rng.integers(60, 100))
            augment.append(
                {
                    "epoch": epoch,
                    "samples": samples,
                    "masked_samples": masked,
                    "masked_share": masked / samples,
                    "terms_masked": masked + int(rng.integers(0, 40)),
                    "terms_by_category": {"disease": masked},
                }
            )
            records.append({"step": step, "epoch": float(epoch + 1), "augment": augment[-1]})
    evaluation = {
        "answer_rouge_l": float(0.3 + rng.normal(0, 0.01)),
        "think": {"bleu": float(12 + rng.normal(0, 0.5))},
        "model": "tiny",
    }

    folder = root / name.replace("<", "_").replace(">", "_").replace("/", "_")
    folder.mkdir(parents=True)
    (folder / "config.resolved.yaml").write_text(
        yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    summary = {
        "status": "complete",
        "run_name": name,
        "step": MAX_STEPS,
        "max_steps": MAX_STEPS,
        "random_weights": random_weights,
    }
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (folder / "eval.json").write_text(json.dumps(evaluation), encoding="utf-8")
    return FabricatedRun(
        version, seed, folder, steps, loss, grad_norm, learning_rate, eval_steps, eval_loss, config, augment, evaluation
    )


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory: pytest.TempPathFactory) -> list[FabricatedRun]:
    """v1 and v2 with three seeds each, v3 with one (so both Welch's test and the noise rule are exercised)."""
    root = tmp_path_factory.mktemp("runs")
    return [
        fabricate_run(root, version, seed)
        for version, seeds in (("v1", 3), ("v2", 3), ("v3", 1))
        for seed in range(1, seeds + 1)
    ]


@pytest.fixture
def make_run(tmp_path: Path):
    """Write one more fabricated run folder into this test's temporary folder."""

    def make(version: str, seed: int, **options: Any) -> FabricatedRun:
        return fabricate_run(tmp_path / "runs", version, seed, **options)

    return make
