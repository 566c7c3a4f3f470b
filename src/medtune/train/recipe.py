"""The QLoRA fine-tuning recipe: one class, read top to bottom.

Features (config keys): 4-bit NF4 base (`quant`), LoRA on any projections plus fully trained modules
(`lora`), paged 8-bit AdamW on CUDA (`train.optimizer`), linear/cosine/constant schedules with warmup,
packing with attention kept inside samples (`train.packing`), a chunked lm_head + cross-entropy that never
materialises full logits, token-weighted loss over the whole optimizer step, periodic eval, atomic
checkpoints every `save_steps` with exact resume (`--resume`), metrics.jsonl plus optional trackers.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase, set_seed

from medtune.config import ConfigError, RunConfig, changes_on_resume, dump_config
from medtune.data.batching import TrainingSet, micro_batches, step_positions, to_device, trained_token_counts
from medtune.data.prepare import prepare_data
from medtune.data.render import Encoded
from medtune.model.load import LoadedModel, apply_lora, embeddings_tied, load_base_model, load_tokenizer
from medtune.model.memory_plan import MemoryPlan, plan_for_run
from medtune.model.speed import SpeedPlan, apply_speed
from medtune.run_folder import (
    ADAPTER_FACTS_FILE,
    ADAPTER_WEIGHTS_FILE,
    CONFIG_FILE,
    RunFolder,
    staging,
    umask_permissions,
    write_atomic,
    write_json,
)
from medtune.train.checkpoint import (
    drop_training_state,
    load_training_state,
    restore_rng,
    rng_state,
    save_checkpoint,
    save_training_state,
)
from medtune.train.distributed import init_distributed
from medtune.train.interrupt import GracefulInterrupt, TrainingInterrupted
from medtune.train.loss import FusedHeadLoss, summed_loss_over
from medtune.train.metrics import JsonlLogger, MetricLogger
from medtune.train.parallel import MicroBatchLoss, Parallelism, build_parallelism
from medtune.train.progress import TrainProgress, say, summary_lines
from medtune.train.schedules import build_scheduler

RANDOM_WEIGHTS_NOTE = (
    "the base model's weights are random (config flag medtune_random_weights): losses show the pipeline works, not "
    "medical quality"
)


class RunExistsError(RuntimeError):
    """The run folder already holds a run; resuming or overwriting must be asked for."""


def check_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> None:
    """RunExistsError unless a run may start in `cfg.run_dir()` as asked: a folder holding a run needs --resume or
    --overwrite, a complete run has nothing to resume, and files that are not a run's are never trained over (nor
    deleted by --overwrite). ConfigError when --resume would change what the run computes. (`train --processes`
    asks before starting processes, so the error is one line, not one per process.)"""
    if resume and overwrite:  # one continues the run, the other deletes it: neither may silently win
        raise RunExistsError(
            "--resume and --overwrite: choose one (--resume continues the run from its last checkpoint, --overwrite "
            "deletes it and trains again)"
        )
    run_dir = cfg.run_dir()
    folder = RunFolder(run_dir)
    if not folder.holds_run():
        if foreign := folder.other_files():
            shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
            raise RunExistsError(
                f"{run_dir} holds files that are not a medtune run ({shown}): choose another output_dir or "
                "run_name, or move them away"
            )
        return
    summary = folder.read_summary()
    if summary.get("status") == "complete" and not overwrite:
        raise RunExistsError(
            f"{run_dir} holds a complete run ({summary.get('step')} steps): --overwrite trains it again, or choose "
            "another run_name"
        )
    if not resume and not overwrite:
        raise RunExistsError(
            f"{run_dir} already holds a run: pass --resume to continue it or --overwrite to start again"
        )
    if resume and (refusal := folder.unresumable()):
        raise RunExistsError(refusal)
    if resume and folder.config.is_file() and (changes := changes_on_resume(folder.read_config(), cfg)):
        raise ConfigError(
            f"{run_dir}: --resume with settings that change what the run computes ({'; '.join(changes)}); resume "
            f"with the run's own config ({folder.config}), or start a new run (another run_name, or --overwrite)"
        )


@dataclass
class Window:
    """Sums over the steps since the last log line (saved in checkpoints so resume logs identically)."""

    loss: float = 0.0
    tokens: int = 0
    think: float = 0.0
    think_tokens: int = 0
    answer: float = 0.0
    answer_tokens: int = 0
    grad_norms: list[float] = field(default_factory=list)
    input_tokens: int = 0
    seconds: float = 0.0


def library_versions() -> dict[str, str]:
    names = ["medtune", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors"]
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def hardware(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return info


def describe_model(name_or_path: str, loaded: LoadedModel) -> dict[str, Any]:
    """What the base model is, whatever its weights: as configured, the folder or hub id it was loaded from, its
    architecture and size (parameters before LoRA; transformers counts 4-bit weights unpacked)."""
    parameters = loaded.model.num_parameters()
    size = f"{parameters / 1e9:.1f}B" if parameters >= 1e9 else f"{parameters / 1e6:.1f}M"
    return {
        "name_or_path": name_or_path,
        "source": loaded.source,
        "architecture": type(loaded.model).__name__,
        "parameters": parameters,
        "size": f"{size} parameters",
    }


def peak_memory_gib(device: torch.device) -> float:
    """Peak accelerator memory on CUDA; peak resident memory of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class FineTuneRecipe:
    """QLoRA supervised fine-tuning of a causal LM on question/think/answer consultations."""

    def __init__(
        self, cfg: RunConfig, resume: bool = False, overwrite: bool = False, skip_bad_rows: bool | None = None
    ) -> None:
        self.cfg = cfg  # with the memory plan's levers once planned
        self.configured = cfg  # as the user wrote it: what config.resolved.yaml records
        if skip_bad_rows is not None:
            cfg.data.skip_bad_rows = skip_bad_rows
        self.run_dir = cfg.run_dir()
        self.resume = resume
        self.overwrite = overwrite
        self.dist = init_distributed()
        self.device = self.dist.device()
        self.parallel: Parallelism = build_parallelism(cfg.train, self.dist)
        # progress: saved in checkpoints, restored by --resume
        self.step = 0
        self.samples_consumed = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.window = Window()
        # the run folder: what _check_run_dir found, and what this invocation did to it
        self.found_run_dir: tuple[bool, bool] = (False, False)  # (the folder existed, it held a run)
        self.resume_from: tuple[int, Path] | None = None  # the checkpoint --resume continues from: (step, folder)
        self.resume_state: dict[str, Any] | None = None
        self.saved_step: int | None = None  # the newest checkpoint's step, once there is one
        self.created_run_dir = False  # this invocation made the run folder (or cleared it): a failure removes it
        # built by setup(), in its order
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_set: TrainingSet | None = None  # owns the augmentation statistics
        self.val_encoded: list[Encoded] = []
        self.data_stats: dict[str, Any] = {}
        self.model: PeftModel | None = None
        self.model_facts: dict[str, Any] = {}  # summary.json's `model`
        self.random_weights = False
        self.tied_before = False  # the base model's embeddings were tied, before LoRA
        self.memory_plan: MemoryPlan | None = None
        self.speed_plan: SpeedPlan | None = None
        self.head_loss: FusedHeadLoss | None = None
        self.micro_batch_loss: MicroBatchLoss | None = None
        self.env: dict[str, Any] = {}
        self.trainable_params: list[torch.nn.Parameter] = []
        self.optimizer_name = ""
        self.optimizer: torch.optim.Optimizer | None = None
        self.max_steps = 0
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.loggers: list[MetricLogger] = []
        self.last_eval: dict[str, Any] | None = None
        self.started = time.perf_counter()

    # ---- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        self._check_run_dir()  # first: refuse to clobber a run, and read the state to resume, before any slow work
        set_seed(self.cfg.train.seed)
        self.tokenizer = load_tokenizer(self.cfg.model)
        self._setup_data()  # before the model: bad data fails in seconds, not after the weights are loaded
        self._plan_memory()  # before the model too: a run that cannot fit stops here, not out of memory at step 3
        self._setup_model()
        self._setup_optimizer()
        self._setup_scheduler()  # needs the step count, which `epochs` derives from the data size
        if self.resume_state is not None:
            self._load_checkpoint()  # after optimizer and scheduler exist, to load their states
        self._setup_run_dir()  # only now is anything written (or an old run cleared for --overwrite)
        if self.dist.rank > 0:  # same LoRA init everywhere (seeded above), but each process its own dropout
            torch.manual_seed(self.cfg.train.seed * 1009 + self.dist.rank * 7919 + self.step)
        if self.dist.is_main:
            try:
                self._setup_logging()  # after resume: drops metrics logged past the checkpoint
            except Exception:  # a tracker that cannot start: as any failure before the first checkpoint
                self._record_stop("failed")
                raise
        self.dist.barrier()  # the run folder is ready before any process trains

    def _check_run_dir(self) -> None:
        check_run_dir(self.configured, self.resume, self.overwrite)
        self.found_run_dir = (self.run_dir.exists(), RunFolder(self.run_dir).holds_run())  # before the main one writes
        if not self.resume:
            return
        self.resume_from = RunFolder(self.run_dir).resumable_checkpoint()
        if self.resume_from is not None:
            self.resume_state = load_training_state(self.resume_from[1])
            self.saved_step = self.resume_from[0]
        if self.dist.is_main:
            say(
                f"resuming {self.cfg.run_name} from step {self.resume_from[0]} ({self.resume_from[1]})"
                if self.resume_from
                else f"--resume: {self.run_dir} has no checkpoint yet, so {self.cfg.run_name} starts from step 0"
            )

    def _setup_run_dir(self) -> None:
        existed, has_run = self.found_run_dir
        self.created_run_dir = not existed or (has_run and self.resume_from is None)
        if self.dist.is_main:
            if has_run and self.resume_from is None:  # --overwrite, or --resume with nothing saved to resume from
                shutil.rmtree(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            folder = RunFolder(self.run_dir)
            write_atomic(folder.config, dump_config(self.configured))
            write_json(folder.env, self.env)
            write_json(folder.data_stats, self.data_stats)
        self.dist.barrier()

    def _setup_data(self) -> None:
        prepared = prepare_data(self.cfg, self.tokenizer)
        self.train_set, self.val_encoded, self.data_stats = prepared.train, prepared.validation, prepared.stats
        if not self.dist.is_main:
            return
        listed = RunFolder(self.run_dir).data_stats
        for read in self.data_stats["files"].values():
            if read["skipped_rows"]:
                say(
                    f"skipped {read['skipped_rows']} bad rows of {read['file']} (skip_bad_rows); each is listed in "
                    f"{listed}"
                )
        for split, name in (("train", "training"), ("validation", "validation")):
            stats = self.data_stats[split]
            if stats["answer_cut"]:  # not trained on (or evaluated): a run on part of its data says so
                say(
                    f"{stats['answer_cut']} of {stats['rows']} {name} rows lose their whole answer at max_length "
                    f"{self.cfg.data.max_length} and are left out (each is listed in {listed})"
                )

    def _setup_model(self) -> None:
        train = self.cfg.train
        loaded = load_base_model(self.cfg.model, self.cfg.quant, self.device, fsdp=self.parallel.shards_weights)
        self.random_weights, self.model_facts = (
            loaded.random_weights,
            describe_model(self.cfg.model.name_or_path, loaded),
        )
        self.tied_before = embeddings_tied(loaded.model)
        self.model = apply_lora(loaded.model, self.cfg.lora)
        self.speed_plan = apply_speed(
            self.model,
            self.cfg.speed,
            self.device,
            packing=train.packing,
            gradient_checkpointing=train.gradient_checkpointing,
        )
        if self.resume_from is not None:  # checkpoints hold whole tensors: load them before FSDP shards the layers
            set_peft_model_state_dict(self.model, load_file(self.resume_from[1] / ADAPTER_WEIGHTS_FILE))
        self.head_loss = FusedHeadLoss.of(self.model, train.loss_chunk_tokens)
        self.micro_batch_loss = self.parallel.wrap(self.model, self.head_loss)
        self.model.train()
        self.env = {
            "versions": library_versions(),
            "python": sys.version.split()[0],
            "hardware": hardware(self.device),
            "speed": self.speed_plan.as_dict(),
            "memory_plan": self.memory_plan.as_dict(),
            "processes": self.dist.world_size,
            "batch": self._batch_layout(),
        }

    def _batch_layout(self) -> dict[str, Any]:
        train = self.cfg.train
        layout = self.dist.batch_layout(train.per_device_batch_size, train.gradient_accumulation_steps)
        packed = {"packed_row_tokens": self.cfg.row_tokens()} if train.packing else {}
        return {**layout, **packed, "parallelism": self.parallel.name}

    def _plan_memory(self) -> None:
        """The levers that fit speed.memory_budget (model/memory_plan.py): self.cfg becomes the config with them; the
        config as written stays `self.configured`, which config.resolved.yaml records."""
        steps = self.cfg.train.total_steps(len(self.train_set))
        lengths = [len(encoded) for encoded in self.train_set.encoded]
        self.memory_plan, self.cfg = plan_for_run(
            self.cfg, lengths, steps, self.device, self.dist.world_size, self.parallel.shards_weights
        )
        if self.dist.is_main:
            for line in self.memory_plan.lines():
                say(line)

    def _setup_optimizer(self) -> None:
        train = self.cfg.train
        self.trainable_params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer_name = train.resolved_optimizer(self.device.type)
        self.optimizer = self.parallel.optimizer(
            self.trainable_params, self.optimizer_name, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay
        )

    def _setup_scheduler(self) -> None:
        train = self.cfg.train
        self.max_steps = train.total_steps(len(self.train_set))
        self.scheduler = build_scheduler(self.optimizer, train, self.max_steps)

    def _load_checkpoint(self) -> None:
        """The training state read in _check_run_dir; the checkpoint's adapter weights were loaded in _setup_model."""
        state, self.resume_state = self.resume_state, None
        self.parallel.load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        self.step, self.samples_consumed = state["step"], state["samples_consumed"]
        self.tokens_seen, self.elapsed = state["tokens_seen"], state["elapsed"]
        self.window = Window(**state["window"])
        self.train_set.load_state_dict(state)

    def _setup_logging(self) -> None:
        self.loggers = [JsonlLogger(RunFolder(self.run_dir).metrics, resume_step=self.step if self.resume else None)]
        if self.cfg.train.report_to:
            from medtune.train.trackers import build_trackers

            # the config as written, as config.resolved.yaml (the plan's levers are env.json's)
            self.loggers += build_trackers(
                self.configured, self.run_dir, resume_step=self.step if self.resume else None
            )

    # ---- one optimizer step --------------------------------------------------------------------
    def _next_step_samples(self) -> list[Encoded]:
        train = self.cfg.train
        positions = step_positions(self.samples_consumed, train.samples_per_step(), len(self.train_set), train.seed)
        return self.train_set.draw(positions)

    def train_step(self, items: list[Encoded]) -> float:
        """Forward/backward over this process's micro-batches of the step, sum gradients across processes,
        clip, update. Returns grad_norm before clipping."""
        train = self.cfg.train
        step_tokens, think_tokens, answer_tokens = trained_token_counts(items)
        batches = micro_batches(
            self.dist.shard(items),
            train.per_device_batch_size,
            self.cfg.row_tokens(),
            train.packing,
            self.tokenizer.pad_token_id,
        )
        sums = torch.zeros(3, device=self.device)  # loss, think, answer
        passes = self.parallel.forwards(batches)
        for index, (batch, weight) in enumerate(passes):  # gradients are reduced in the last pass's backward
            loss = self.micro_batch_loss(to_device(batch, self.device), last=index == len(passes) - 1)
            (loss.total * weight / step_tokens).backward()
            sums += weight * torch.stack([loss.total.detach(), loss.think, loss.answer])
        self.parallel.finish_gradients()
        max_norm = train.max_grad_norm if train.max_grad_norm is not None else float("inf")
        grad_norm = float(self.parallel.clip_grad_norm(max_norm))  # device sync
        self.optimizer.step()
        self.parallel.finish_step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, think_sum, answer_sum = self.dist.sum_(sums).tolist()
        w = self.window
        w.loss, w.think, w.answer = w.loss + loss_sum, w.think + think_sum, w.answer + answer_sum
        w.tokens, w.think_tokens, w.answer_tokens = (
            w.tokens + step_tokens,
            w.think_tokens + think_tokens,
            w.answer_tokens + answer_tokens,
        )
        w.input_tokens += sum(len(e) for e in items)
        w.grad_norms.append(grad_norm)
        return grad_norm

    # ---- the loop ----------------------------------------------------------------------------
    def train(self) -> None:
        self._write_summary("running")
        try:
            self._train_loop()
            # the steps are done: a first Ctrl-C or SIGTERM now waits for adapter/, or a run with no checkpoint is lost
            with GracefulInterrupt("training is done: saving the adapter first", announce=self.dist.is_main):
                self._save_final_adapter()
        except KeyboardInterrupt:
            said = self._record_stop("interrupted")
            raise TrainingInterrupted(said if self.dist.is_main else "") from None  # the main process says it once
        except Exception:
            self._record_stop("failed")
            raise
        self._finish()

    def _train_loop(self) -> None:
        train = self.cfg.train
        with (
            TrainProgress(self.cfg.run_name, self.max_steps, self.step, show=self.dist.is_main) as progress,
            GracefulInterrupt(announce=self.dist.is_main) as interrupt,
        ):
            b = self._batch_layout()
            passes = (
                f"packed into rows of up to {b['packed_row_tokens']:,} tokens"
                if "packed_row_tokens" in b
                else f"in up to {b['micro_batches_per_process']} micro-batches of {b['per_device_batch_size']} each"
            )
            progress.note(
                f"batch: {b['global_batch']} samples per optimizer step = {b['processes']} process(es) x "
                f"{b['samples_per_process']} samples, {passes} (parallelism: {b['parallelism']})"
            )
            if not self.val_encoded:
                progress.note("no validation rows: no eval loss will be computed")
            while self.step < self.max_steps:
                epoch_before = self.samples_consumed // len(self.train_set)
                started = time.perf_counter()
                items = self._next_step_samples()
                lr = self.scheduler.get_last_lr()[0]
                self.train_step(items)
                self.step += 1
                self.samples_consumed += train.samples_per_step()
                self.window.seconds += time.perf_counter() - started
                if self.step % train.logging_steps == 0 or self.step == self.max_steps:
                    record = self._log_train(lr)
                    progress.update(self.step, record)
                else:
                    progress.update(self.step)
                at_end = self.step == self.max_steps
                if train.eval_steps and self.val_encoded and (self.step % train.eval_steps == 0 or at_end):
                    progress.note(f"step {self.step}: eval_loss {self.evaluate()['eval_loss']:.4f}")
                if self.samples_consumed // len(self.train_set) > epoch_before:
                    self._log_augmentation(epoch_before)
                if at_end:  # saved as adapter/ with no optimizer state (_save_final_adapter): nothing left to resume
                    break
                stop = interrupt.stop_after_this_step(self.dist)  # Ctrl-C or SIGTERM, on any process
                if self.step % train.save_steps == 0 or stop:
                    self.save_checkpoint()
                if stop:
                    raise KeyboardInterrupt

    def _record_stop(self, status: str) -> str:
        """After Ctrl-C or an error: summary.json records the step saved (what --resume continues from); a run
        folder this invocation made, with nothing saved in it, is removed. Returns the line said to the user."""
        saved = self.saved_step
        if saved is None and self.created_run_dir:
            if self.dist.is_main:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            message = (
                f"{status} at step {self.step}, before the first checkpoint: nothing was saved, and {self.run_dir} "
                "was removed"
            )
        elif saved is None:
            self._write_summary(status)
            message = (
                f"{status} at step {self.step}, before the first checkpoint: --resume starts {self.cfg.run_name} "
                "again from step 0"
            )
        else:
            self._write_summary(status)
            last = "" if saved == self.step else f"; the last checkpoint is step {saved}"
            message = f"{status} at step {self.step}{last}: resume with --resume"
        if (
            self.dist.is_main and status == "failed"
        ):  # an interruption's message is TrainingInterrupted's, for the caller
            say(message)
        return message

    def _epoch(self) -> float:
        return round(self.samples_consumed / len(self.train_set), 4)

    def _log(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:  # only the main process has loggers
            logger.log(record)

    def _log_augmentation(self, epoch: int) -> None:
        """What the augmentation did in one epoch drawn; nothing while augmentation is off."""
        augment = self.train_set.augmentation_epoch(epoch)
        if augment is not None:
            self._log({"step": self.step, "epoch": self._epoch(), "augment": augment})

    def _log_train(self, lr: float) -> dict[str, Any]:
        w = self.window
        self.tokens_seen += w.input_tokens
        self.elapsed += w.seconds
        record = {
            "step": self.step,
            "epoch": self._epoch(),
            "loss": w.loss / w.tokens,
            "loss_think": w.think / w.think_tokens if w.think_tokens else None,
            "loss_answer": w.answer / w.answer_tokens if w.answer_tokens else None,
            "grad_norm": float(np.mean(w.grad_norms)),
            "grad_norm_max": max(w.grad_norms),
            "learning_rate": lr,
            "tokens_seen": self.tokens_seen,
            "tokens_per_s": w.input_tokens / w.seconds if w.seconds else None,
            "peak_memory_gib": round(peak_memory_gib(self.device), 3),
            "elapsed_s": round(self.elapsed, 2),
        }
        self.window = Window()
        self._log(record)
        self._write_summary("running", last_train=record)
        return record

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Token-weighted loss over the whole (non-empty) validation set (dropout off), sharded across processes."""
        self.model.eval()
        train = self.cfg.train
        sums = summed_loss_over(
            self.model,
            self.head_loss,
            self.dist.shard(self.val_encoded),
            batch_size=train.per_device_batch_size,
            row_tokens=self.cfg.row_tokens(),
            packing=train.packing,
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
            forwards=self.parallel.forwards,
        )
        self.model.train()
        total, think, answer = self.dist.sum_(sums).tolist()
        tokens, think_tokens, answer_tokens = trained_token_counts(self.val_encoded)
        record = {
            "step": self.step,
            "epoch": self._epoch(),
            "eval_loss": total / tokens,
            "eval_loss_think": think / think_tokens if think_tokens else None,
            "eval_loss_answer": answer / answer_tokens if answer_tokens else None,
            "eval_tokens": tokens,
        }
        self._log(record)
        self.last_eval = record
        return record

    # ---- saving --------------------------------------------------------------------------------
    def _save_adapter(self, folder: Path, weights: dict[str, torch.Tensor] | None, with_tokenizer: bool) -> None:
        """`weights`: the trained tensors gathered whole under FSDP; None = PEFT reads them from the model.

        The tokenizer (11 MB for Qwen3, never changed by training) goes into adapter/ only: medtune loads a
        checkpoint with its base model's tokenizer.
        """
        self.model.save_pretrained(folder, state_dict=weights)
        umask_permissions(folder)
        if with_tokenizer:
            self.tokenizer.save_pretrained(folder)
        shutil.copy(RunFolder(self.run_dir).config, folder / CONFIG_FILE)
        write_json(folder / ADAPTER_FACTS_FILE, self._adapter_facts())

    def _adapter_facts(self) -> dict[str, Any]:
        """What chat/merge need beyond PEFT's own config: the base's source and how embeddings were trained."""
        trained = sorted(set(self.cfg.lora.modules_to_save) & {"embed_tokens", "lm_head"})
        return {
            "base_model": self.cfg.model.model_dump(mode="json"),
            "quant": self.cfg.quant.model_dump(mode="json"),
            "random_weights": self.random_weights,
            "base_embeddings_tied": self.tied_before,
            "trained_embeddings": trained,
            "embeddings_tied": embeddings_tied(self.model.get_base_model()),
            "step": self.step,
        }

    def save_checkpoint(self) -> None:
        """Written by the main process; the others hold identical weights and optimizer states (under FSDP, their
        shards, gathered whole first so the checkpoint is a single process's and resumes on any process count)."""
        weights = self.parallel.trainable_state(self.model)  # collectives under FSDP: every process joins
        optimizer = self.parallel.optimizer_state(self.optimizer)
        if not self.dist.is_main:
            self.saved_step = self.step  # rank 0 writes it; every process knows what resume continues from
            return
        state = {
            "step": self.step,
            "samples_consumed": self.samples_consumed,
            "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "window": self.window.__dict__,
            **self.train_set.state_dict(),
        }

        def write(folder: Path) -> None:
            self._save_adapter(folder, weights, with_tokenizer=False)
            save_training_state(folder, state)

        save_checkpoint(self.run_dir, self.step, write, self.cfg.train.save_total_limit)
        self.saved_step = self.step

    def _save_final_adapter(self) -> None:
        weights = self.parallel.trainable_state(self.model)  # collectives under FSDP: every process joins
        self.dist.barrier()
        if not self.dist.is_main:
            return
        final = RunFolder(self.run_dir).adapter
        tmp = staging(final)
        shutil.rmtree(tmp, ignore_errors=True)
        self._save_adapter(tmp, weights, with_tokenizer=True)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def _finish(self) -> None:
        """The run is complete once adapter/ is in place (_save_final_adapter)."""
        if not self.dist.is_main:
            return
        final = RunFolder(self.run_dir).adapter
        if self.samples_consumed % len(self.train_set):  # an epoch ended by the last step was logged with it
            self._log_augmentation(self.samples_consumed // len(self.train_set))
        self._write_summary("complete")
        # a complete run is not resumed: its optimizer state is dead weight
        for _, folder in RunFolder(self.run_dir).list_checkpoints():
            drop_training_state(folder)
        for line in summary_lines(RunFolder(self.run_dir).read_summary(), str(final)):
            say(line)

    def _write_summary(self, status: str, last_train: dict[str, Any] | None = None) -> None:
        """`step` is the steps done while running or complete; after a stop, the step saved (0 if none), which
        --resume continues from, with `stopped_at_step` beside it."""
        if not self.dist.is_main:
            return
        summary_path = RunFolder(self.run_dir).summary
        previous = RunFolder(self.run_dir).read_summary()
        stopped = status in ("interrupted", "failed")
        summary = {
            **{key: value for key, value in previous.items() if key not in ("stopped_at_step", "random_weights_note")},
            "status": status,
            "run_name": self.cfg.run_name,
            "step": (self.saved_step or 0) if stopped else self.step,
            **({"stopped_at_step": self.step} if stopped else {}),
            "max_steps": self.max_steps,
            "model": self.model_facts,
            "random_weights": self.random_weights,
            **({"random_weights_note": RANDOM_WEIGHTS_NOTE} if self.random_weights else {}),
            "optimizer": self.optimizer_name,
            "device": str(self.device),
            "tokens_seen": self.tokens_seen,
            "train_seconds": round(self.elapsed, 2),
            "wall_seconds": round(time.perf_counter() - self.started, 2),
            "tokens_per_s": self.tokens_seen / self.elapsed if self.elapsed else None,
            "trainable_parameters": sum(p.numel() for p in self.trainable_params),
            "embeddings": self._adapter_facts(),
            "data": {
                split: {k: v for k, v in self.data_stats[split].items() if not isinstance(v, list)}
                for split in ("train", "validation")
            },
        }
        if last_train is not None:
            summary["last_train"] = last_train
        if self.last_eval:
            summary["last_eval"] = self.last_eval
        augmentation = self.train_set.augmentation_summary()
        if augmentation is not None:
            summary["augmentation"] = augmentation
        write_json(summary_path, summary)

    def cleanup(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.dist.close()


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, skip_bad_rows: bool | None = None) -> Path:
    """Train one run end to end and return its folder."""
    recipe = FineTuneRecipe(cfg, resume=resume, overwrite=overwrite, skip_bad_rows=skip_bad_rows)
    try:
        recipe.setup()
        recipe.train()
    finally:
        recipe.cleanup()
    return recipe.run_dir
