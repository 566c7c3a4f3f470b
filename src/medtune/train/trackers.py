"""Optional experiment trackers behind `train.report_to`: SwanLab, TensorBoard, Weights & Biases.

Each gets the records metrics.jsonl gets, as flat scalars (`augment/masked_share`), and the resolved
config when it starts, and writes into the run folder. SwanLab and W&B only upload when an API key is
set; otherwise they write offline runs that `swanlab sync` / `wandb sync` can upload later.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from medtune.config import RunConfig
from medtune.train.metrics import MetricLogger

TRACKER_PACKAGES = {"swanlab": "swanlab", "tensorboard": "tensorboard", "wandb": "wandb"}
"""report_to name -> the package it needs; each package is also the name of medtune's extra that installs it."""
DEFAULT_PROJECT = "medtune"


class TrackerError(RuntimeError):
    """A tracker named in report_to cannot start; the message says what to install."""


def build_trackers(cfg: RunConfig, run_dir: Path, resume_step: int | None = None) -> list[MetricLogger]:
    """Start every tracker in `cfg.train.report_to`, after checking that all their packages are installed.

    Args:
        resume_step: the checkpoint step a resumed run continues from; TensorBoard then hides what the
            interrupted run logged after it, as metrics.jsonl drops those records.
    """
    names = list(dict.fromkeys(cfg.train.report_to))
    for name in names:
        require_package(name)
    config = cfg.model_dump(mode="json")
    trackers: list[MetricLogger] = []
    try:
        for name in names:
            if name == "swanlab":
                trackers.append(SwanLabTracker(run_dir / "swanlog", cfg.run_name, config))
            elif name == "tensorboard":
                trackers.append(TensorBoardTracker(run_dir / "tensorboard", config, resume_step))
            else:
                trackers.append(WandbTracker(run_dir, cfg.run_name, config))
    except BaseException:
        for tracker in trackers:
            tracker.close()
        raise
    return trackers


def require_package(tracker: str) -> None:
    package = TRACKER_PACKAGES[tracker]
    try:
        importlib.import_module(package)
    except ImportError as err:
        raise TrackerError(
            f"report_to: {tracker} needs the {package} package: pip install 'medtune[{package}]' ({err})"
        ) from None


def scalar_metrics(record: dict[str, Any], prefix: str = "") -> dict[str, int | float]:
    """The record's numbers, nested dicts flattened to `augment/terms_by_category/症状` keys.

    `step` is the x axis, not a metric; None (no think tokens in the window, ...) and non-numbers are
    left out, as trackers only plot scalars.
    """
    metrics: dict[str, int | float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            metrics.update(scalar_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step":
            metrics[name] = value
    return metrics


def swanlab_mode(settings: Any) -> str:
    """SWANLAB_MODE (or a SwanLab config file) decides; else online with an API key (env or `swanlab login`), offline
    without."""
    if "mode" in settings.model_fields_set:
        return settings.mode
    return "online" if settings.api_key else "offline"


class _CloudRunTracker:
    """SwanLab and W&B runs share one interface: `run.log(metrics, step=)` and `run.finish()`."""

    run: Any

    def log(self, record: dict[str, Any]) -> None:
        metrics = scalar_metrics(record)
        if metrics:
            self.run.log(metrics, step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class SwanLabTracker(_CloudRunTracker):
    """A SwanLab run in `<run_dir>/swanlog`; SWANLAB_PROJECT_NAME names the project (default `medtune`)."""

    def __init__(self, log_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        import swanlab

        settings = swanlab.Settings()  # SwanLab's own reading of its environment, config files and saved login
        self.run = swanlab.init(
            project=settings.project.name or DEFAULT_PROJECT,
            name=run_name,
            config=config,
            log_dir=str(log_dir),
            mode=swanlab_mode(settings),
        )


class TensorBoardTracker:
    """Event files in `<run_dir>/tensorboard`; the config is the `config` text summary, as JSON."""

    def __init__(self, log_dir: Path, config: dict[str, Any], resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step makes TensorBoard discard the interrupted run's events from that step on
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=None if resume_step is None else resume_step + 1)
        self.writer.add_text("config", json.dumps(config, ensure_ascii=False, indent=2))

    def log(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in scalar_metrics(record).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # records are minutes apart; a crash should not lose the last ones

    def close(self) -> None:
        self.writer.close()


class WandbTracker(_CloudRunTracker):
    """A W&B run in `<run_dir>/wandb`: offline unless WANDB_API_KEY is set; WANDB_MODE and WANDB_PROJECT are
    honoured."""

    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        import wandb

        mode = None if "WANDB_MODE" in os.environ else ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=run_name,
            dir=str(run_dir),
            config=config,
            mode=mode,
        )
