"""Find a trained adapter (a run folder, one of its checkpoints, or an adapter folder) and load it for inference.

The base model is loaded exactly as it was trained (same source, same quantization and compute dtype,
both read from the adapter's `medtune_adapter.json`), so chat, generation and eval see the model that
training saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from medtune.config import ConfigError, ModelConfig, QuantConfig, RunConfig, load_config
from medtune.model.load import default_device, load_adapter, load_base_model
from medtune.run_folder import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_DIR,
    ADAPTER_FACTS_FILE,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    RunFolder,
    is_adapter_folder,
)

RANDOM_WEIGHTS_WARNING = "random weights (offline tiny model): outputs are noise and show only that the pipeline works"


class RunNotFoundError(FileNotFoundError):
    """RUN names no adapter medtune can load; the message says what was looked for and what exists."""


@dataclass
class AdapterRun:
    """A trained adapter and what medtune recorded about it."""

    adapter_dir: Path
    output_dir: Path
    """Where results about this adapter go: the run folder, or the adapter folder when RUN named one directly."""
    checkpoint: str
    """`adapter` (the final one) or `step-000400`."""
    facts: dict[str, Any]
    config: RunConfig

    @property
    def random_weights(self) -> bool:
        return bool(self.facts["random_weights"])

    def base_model_config(self) -> ModelConfig:
        return ModelConfig.model_validate(self.facts["base_model"])

    def trained_quant_config(self) -> QuantConfig:
        return QuantConfig.model_validate(self.facts["quant"])


@dataclass
class InferenceModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    run: AdapterRun
    with_adapter: bool

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _checkpoint_steps(run_dir: Path) -> str:
    steps = [str(step) for step, _ in RunFolder(run_dir).list_checkpoints()]
    return ", ".join(steps) if steps else "none"


def is_model_folder(path: Path) -> bool:
    """A merged (or any transformers) model folder rather than a run or adapter folder."""
    return (path / "config.json").is_file() and not is_adapter_folder(path)


def _final_adapter_step(run_folder: RunFolder) -> int | None:
    """The step the final adapter was saved at (training saves no checkpoint at its last step: adapter/ holds it)."""
    facts = run_folder.adapter / ADAPTER_FACTS_FILE
    if not is_adapter_folder(run_folder.adapter) or not facts.is_file():
        return None
    return json.loads(facts.read_text(encoding="utf-8")).get("step")


def _no_adapter(path: Path) -> str:
    """Why `path` has no adapter to load, saying what the folder is: an unfinished run, a merged model, a folder of
    runs, or none of medtune's."""
    if RunFolder(path).holds_run():
        return (
            f"{path}: no final adapter ({ADAPTER_DIR}/{ADAPTER_CONFIG_FILE}) — the run may still be training or "
            f"have stopped early; saved checkpoints: {_checkpoint_steps(path)} (pick one with --checkpoint N)"
        )
    if is_model_folder(path):
        return f"{path}: a merged model folder, not a run: already merged; use it directly"
    runs = [
        child
        for child in sorted(path.iterdir())
        if child.is_dir() and (RunFolder(child).holds_run() or is_adapter_folder(child / ADAPTER_DIR))
    ]
    if runs:
        return f"{path} holds runs, not a run: {', '.join(map(str, runs))}"
    return (
        f"{path}: not a medtune run (no {ADAPTER_DIR}/, {CHECKPOINTS_DIR}/ or {METRICS_FILE}) "
        f"nor an adapter folder (no {ADAPTER_CONFIG_FILE})"
    )


def resolve_run(path: str | Path, checkpoint: int | None = None) -> AdapterRun:
    """The adapter that RUN (and `--checkpoint N`) names, with its facts and resolved config.

    `--checkpoint N` of a complete run's last step names its final adapter: those are that step's weights.

    Raises:
        RunNotFoundError: no such folder, no final adapter, no such checkpoint (the error lists the saved
            steps), a folder that is no run (it says what it is), or an adapter folder without medtune's
            `medtune_adapter.json` / `config.resolved.yaml`.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise RunNotFoundError(f"{path}: no such run folder or adapter folder")
    run_folder = RunFolder(path)
    if checkpoint is not None:
        folder = run_folder.checkpoint(checkpoint)
        if is_adapter_folder(folder):
            adapter_dir, output_dir, name = folder, path, folder.name
        elif checkpoint == _final_adapter_step(run_folder):
            adapter_dir, output_dir, name = run_folder.adapter, path, ADAPTER_DIR
        else:
            raise RunNotFoundError(
                f"{path}: no checkpoint at step {checkpoint}; saved steps: {_checkpoint_steps(path)}"
            )
    elif is_adapter_folder(run_folder.adapter):
        adapter_dir, output_dir, name = run_folder.adapter, path, ADAPTER_DIR
    elif is_adapter_folder(path):
        adapter_dir, output_dir, name = path, path, path.name
    else:
        raise RunNotFoundError(_no_adapter(path))
    for required in (ADAPTER_FACTS_FILE, CONFIG_FILE):
        if not (adapter_dir / required).is_file():
            raise RunNotFoundError(f"{adapter_dir}: no {required}; medtune loads adapters trained by `medtune train`")
    facts = json.loads((adapter_dir / ADAPTER_FACTS_FILE).read_text(encoding="utf-8"))
    try:
        config = load_config(adapter_dir / CONFIG_FILE)
    except ConfigError as err:
        raise RunNotFoundError(f"{adapter_dir}: the adapter's config cannot be read: {err}") from None
    return AdapterRun(adapter_dir, output_dir, name, facts, config)


def load_for_inference(
    run: AdapterRun, with_adapter: bool = True, device: torch.device | None = None
) -> InferenceModel:
    """The base as trained (4-bit or not) plus the adapter, in eval mode with the KV cache on."""
    loaded = load_base_model(run.base_model_config(), run.trained_quant_config(), device or default_device())
    model = load_adapter(loaded.model, run.adapter_dir) if with_adapter else loaded.model
    model.eval()
    loaded.model.config.use_cache = True  # training turned it off; generation needs it
    return InferenceModel(model, loaded.tokenizer, run, with_adapter)


def describe(loaded: InferenceModel) -> list[str]:
    """Banner lines: what model this is, and, first of all, whether its weights are random."""
    run = loaded.run
    quant = run.facts["quant"]["mode"]
    base = run.facts["base_model"]["name_or_path"]
    adapter = f"{run.adapter_dir} (step {run.facts['step']})" if loaded.with_adapter else "none (base model only)"
    lines = [f"base model: {base} ({'4-bit ' + quant if quant != 'none' else 'not quantized'})", f"adapter: {adapter}"]
    if run.random_weights:
        lines.insert(0, f"WARNING: {RANDOM_WEIGHTS_WARNING}")
    return lines
