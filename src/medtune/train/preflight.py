"""`medtune check`: what a run will do and what would stop or waste it, before any weights are loaded.

The data is read and encoded exactly as training will (the tokenizer is the only model file needed), the
schedule is worked out from it, and the environment and the run folder are inspected. Each finding is ok,
warn or error: errors would fail the run (a missing package, no trainable rows, a run folder that needs
--resume or --overwrite); warnings would quietly waste it (answers cut at max_length, no eval loss, many
passes over a small data set, bad rows skipped).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from medtune.config import ConfigError, RunConfig
from medtune.data.formats import DataError
from medtune.data.prepare import prepare_data
from medtune.hub import HubError
from medtune.model.load import load_tokenizer
from medtune.model.memory_plan import MemoryBudgetError, plan_for_run
from medtune.run_folder import RunFolder
from medtune.train.distributed import DistContext, check_global_batch
from medtune.train.schedules import warmup_steps
from medtune.train.trackers import TrackerError, require_package

MANY_EPOCHS = 10


@dataclass(frozen=True)
class Finding:
    level: Literal["ok", "warn", "error"]
    check: str
    message: str


def preflight(
    cfg: RunConfig, skip_bad_rows: bool = False, gpu_memory: str | None = None, processes: int = 1
) -> list[Finding]:
    """Every check of a run config, in the order a run would meet them.

    `skip_bad_rows` does what `medtune train --skip-bad-rows` does: bad rows are listed as a warning instead of
    stopping at the first; False leaves the config's `data.skip_bad_rows` as it is. `gpu_memory` (a size) plans the
    run's memory for a GPU of that size instead of this machine's GPU. `processes`: the run is launched as that many
    processes (torchrun), one GPU each, with the config's train.parallelism; the batch and memory figures are each
    process's.
    """
    if skip_bad_rows:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"skip_bad_rows": True})})
    findings = [*_environment(cfg, processes), *_run_folder(cfg)]
    try:
        tokenizer = load_tokenizer(cfg.model)
    except (HubError, OSError, ValueError) as err:  # no such folder or hub id, offline, or no tokenizer in it
        return [*findings, Finding("error", "model", str(err))]
    try:
        prepared = prepare_data(cfg, tokenizer)
    except (DataError, HubError, OSError, ValueError) as err:  # unreadable data, or a data set that cannot be fetched
        return [*findings, Finding("error", "data", str(err))]
    stats = prepared.stats
    return [
        *findings,
        *_data(stats, cfg.data.max_length),
        *_schedule(cfg, stats["train"]["trained_rows"]),
        _passes(cfg, stats["train"]["token_length"]["mean"], processes),
        *_memory(cfg, [len(e) for e in prepared.train.encoded], gpu_memory, processes),
    ]


def _memory(cfg: RunConfig, lengths: list[int], gpu_memory: str | None, processes: int) -> list[Finding]:
    """The predicted peak of each of `processes` processes on a GPU of `gpu_memory` (else this machine's GPU), the
    levers the plan sets, and whether it fits; from config.json and the token lengths alone, no weights loaded."""
    if gpu_memory is None and not torch.cuda.is_available():
        return [
            Finding(
                "ok", "memory", "no GPU here: --gpu-memory SIZE (e.g. 24GiB) predicts the peak on a GPU of that size"
            )
        ]
    device = torch.device("cuda") if gpu_memory is None else None
    try:
        plan, _ = plan_for_run(
            cfg,
            lengths,
            cfg.train.total_steps(len(lengths)),
            device,
            processes=processes,
            fsdp=shards_weights(cfg, processes),
            budget_size=gpu_memory,
            training=False,
        )
    except MemoryBudgetError as err:
        return [Finding("error", "memory", str(err))]
    except (HubError, OSError, ValueError) as err:  # no config.json to read the sizes from
        return [Finding("error", "memory", f"the model's config.json: {err}")]
    first, *rest = plan.lines()
    level = "ok" if plan.fits is not False else "warn"
    return [Finding(level, "memory", first), *(Finding("ok", "memory", line.strip()) for line in rest)]


def shards_weights(cfg: RunConfig, processes: int) -> bool:
    """FSDP shards the model over several processes; one process holds it whole (train/parallel.py)."""
    return cfg.train.parallelism == "fsdp" and processes > 1


def _environment(cfg: RunConfig, processes: int) -> list[Finding]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "no GPU: training runs on the CPU"
    optimizer = cfg.train.resolved_optimizer(device)
    found = [Finding("ok", "device", f"{device} ({name}); optimizer {optimizer}")]
    try:
        check_global_batch(cfg.train.samples_per_step(), DistContext(world_size=processes))
    except ConfigError as err:
        found.append(Finding("error", "processes", str(err)))
    if cfg.quant.mode != "none" and importlib.util.find_spec("bitsandbytes") is None:
        found.append(
            Finding(
                "error", "quantization", f"quant.mode {cfg.quant.mode} needs bitsandbytes: pip install bitsandbytes"
            )
        )
    for tracker in cfg.train.report_to:
        try:
            require_package(tracker)
        except TrackerError as err:
            found.append(Finding("error", "trackers", str(err)))
    from medtune.report.charts import cjk_font  # a missing font costs the report's chart labels, not the run: ok, said

    font = cjk_font()
    found.append(
        Finding(
            "ok",
            "report font",
            f"CJK font {font} for the charts of zh reports"
            if font
            else (
                "no CJK font: the charts of zh reports keep English labels (install fonts-noto-cjk or "
                "fonts-wqy-microhei)"
            ),
        )
    )
    return found


def _run_folder(cfg: RunConfig) -> list[Finding]:
    run_dir = cfg.run_dir()
    folder = RunFolder(run_dir)
    if not folder.holds_run():
        return [Finding("ok", "run folder", f"{run_dir} (new)")]
    if folder.run_complete():
        return [
            Finding(
                "warn",
                "run folder",
                f"{run_dir} holds a complete run; `medtune train` needs --overwrite to train it again",
            )
        ]
    if refusal := folder.unresumable():
        return [Finding("warn", "run folder", refusal)]
    resumable = folder.resumable_checkpoint()
    where = (
        f"--resume continues from step {resumable[0]}"
        if resumable
        else "it has no checkpoint yet (--resume restarts it)"
    )
    return [Finding("warn", "run folder", f"{run_dir} holds an unfinished run; {where}; --overwrite starts again")]


def _data(stats: dict[str, Any], max_length: int) -> list[Finding]:
    found = []
    for split, info in stats["files"].items():
        if info["skipped_rows"]:
            first = _first([f"{row['source']} {row['field']}: {row['reason']}" for row in info["skipped"]], "; ")
            found.append(
                Finding(
                    "warn", "data", f"{split} file {info['file']}: {info['skipped_rows']} bad rows skipped ({first})"
                )
            )
    train, validation = stats["train"], stats["validation"]
    lengths = train["token_length"]
    found.append(
        Finding(
            "ok",
            "data",
            f"{train['trained_rows']:,} training rows, {lengths['mean']:.0f} tokens on average "
            f"(p90 {lengths['p90']:.0f}, max {lengths['max']}); {validation['trained_rows']} validation rows",
        )
    )
    for split, info in (("training", train), ("validation", validation)):
        cut_short = [source for source in info["truncated_rows"] if source not in set(info["answer_cut_rows"])]
        if cut_short:
            found.append(
                Finding(
                    "warn",
                    "data",
                    f"{len(cut_short)} of {info['rows']} {split} rows are cut at max_length {max_length}: "
                    f"the end of their answer is not trained ({_first(cut_short)})",
                )
            )
        if info["answer_cut"]:
            found.append(
                Finding(
                    "warn",
                    "data",
                    f"{info['answer_cut']} of {info['rows']} {split} rows lose their whole answer at "
                    f"max_length {max_length} and are left out ({_first(info['answer_cut_rows'])})",
                )
            )
    if train["repeated"]:
        found.append(
            Finding(
                "warn",
                "data",
                f"{train['repeated']} training rows repeat an earlier one, so they are trained twice as often "
                f"({_first(train['repeated_rows'])})",
            )
        )
    if validation["in_training"]:
        found.append(
            Finding(
                "warn",
                "eval",
                f"{validation['in_training']} validation rows are also training rows: their eval loss measures "
                f"recall, not how the model does on unseen questions ({_first(validation['in_training_rows'])})",
            )
        )
    if validation["trained_rows"] == 0:
        found.append(Finding("warn", "eval", "no validation rows: no eval loss will be computed"))
    return found


def _first(sources: list[str], separator: str = ", ", shown: int = 3) -> str:
    more = f" and {len(sources) - shown} more" if len(sources) > shown else ""
    return separator.join(sources[:shown]) + more


def _passes(cfg: RunConfig, mean_tokens: float, processes: int) -> Finding:
    """How a step is split into forward passes (in each process): on a GPU the host's work per pass sets the pace."""
    samples = math.ceil(cfg.train.samples_per_step() / processes)  # the largest share (DistContext.shard)
    each = f" in each of {processes} processes" if processes > 1 else ""
    if not cfg.train.packing:
        batches = math.ceil(samples / cfg.train.per_device_batch_size)
        return Finding(
            "ok",
            "batch",
            f"{batches} padded micro-batches of {cfg.train.per_device_batch_size} samples per step{each}",
        )
    step_tokens = samples * mean_tokens
    return Finding(
        "ok",
        "batch",
        f"a step holds about {step_tokens:,.0f} tokens{each}: about {math.ceil(step_tokens / cfg.row_tokens())} "
        f"forward pass(es) in packed rows of up to {cfg.row_tokens():,} tokens",
    )


def _schedule(cfg: RunConfig, train_rows: int) -> list[Finding]:
    train = cfg.train
    steps = train.total_steps(train_rows)
    samples = steps * train.samples_per_step()
    epochs = samples / train_rows
    warmup = warmup_steps(train, steps)
    found = [
        Finding(
            "ok",
            "schedule",
            f"{steps} steps x {train.samples_per_step()} samples = {epochs:.2f} passes over "
            f"{train_rows:,} rows; {train.schedule} decay, {warmup} warmup steps",
        )
    ]
    if warmup >= steps:  # the last step (index steps - 1) is still warming up
        found.append(
            Finding(
                "warn",
                "schedule",
                f"{warmup} warmup steps in a run of {steps} steps: the learning rate never reaches train.lr "
                f"{train.lr:g} (at most {(steps - 1) / warmup:.0%} of it)",
            )
        )
    if epochs > MANY_EPOCHS:
        found.append(Finding("warn", "schedule", f"{epochs:.1f} passes over the training rows: expect overfitting"))
    if train.eval_steps is None:
        found.append(Finding("warn", "eval", "train.eval_steps is null: no eval loss during or after training"))
    if train.save_steps >= steps:
        found.append(
            Finding(
                "warn",
                "checkpoints",
                f"save_steps {train.save_steps} >= {steps} steps: no checkpoint before the end, "
                "so a crash or a kill (out of memory, power, kill -9) loses the whole run; "
                "Ctrl-C and SIGTERM still save where they stop",
            )
        )
    return found
