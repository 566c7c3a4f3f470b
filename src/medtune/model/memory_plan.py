"""Fit a training run into a GPU memory budget (`speed.memory_budget`): choose levers from the memory model.

Levers are tried in order of what they cost in speed, cheapest first, each only as far as needed:
1. the allocator's expandable segments: no kernel changes; the default caching allocator reserved up to 1.38x the
   allocated peak in the bench (a per-process cap limits reserved memory, so a 7.0 GiB peak did not fit 8 GiB);
2. recomputing more decoder layers (`speed.checkpoint_fraction`, up to 1.0): about 1% of step time per layer, about
   1.1 GiB saved per Qwen3-1.7B layer in a 12,900-token row (bench/RESULTS.md, attempt #13);
3. smaller lm_head + cross-entropy chunks (`train.loss_chunk_tokens`, down to 256): a few more small matmuls;
4. offloading the activations to pinned host memory (`speed.offload_activations`, model/offload.py): with every
   layer recomputed only the layers' inputs travel, copied on a side stream while the GPU computes;
5. smaller packed rows (`speed.packed_row_tokens`, never below data.max_length): a step in more forward passes, the
   costliest, since a step is bound by the host's work per pass (one row instead of two was +84-129%, attempt #11).
v2's trained embeddings keep paged 8-bit AdamW states (auto), which live in managed memory and page to the host.
A setting the user wrote (`model_fields_set`) is never changed. A run that cannot fit even with every lever free
stops before training with the numbers; one that would fit only by changing the user's settings gets a warning.
With several processes (DDP or FSDP) the budget and the prediction are each process's, on its own GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from medtune.config import ConfigError, RunConfig, parse_memory_size
from medtune.model.memory import GIB, Levers, MemoryEstimate, MemorySettings, ModelShape, Rows, estimate, packed_rows

log = logging.getLogger(__name__)

# Reserved over allocated memory, the caching allocator's slack: measured 1.14-1.38 in bench calls 5-6 and the
# multi-GPU calls (`peak_reserved_gib` / `peak_gib`).
ALLOCATOR_SLACK = 0.40
# With expandable segments, blocks grow in place instead of splitting fixed segments: an assumption until measured.
EXPANDABLE_SLACK = 0.10
CUDA_CONTEXT_BYTES = 0.6 * GIB  # the CUDA context and kernels: outside the allocator, inside a GPU's memory
AUTO_MARGIN = 0.05  # of the budget, kept free for what the model does not price (other processes, eval, fragmentation)
SMALLEST_LOSS_CHUNK = 256


class MemoryBudgetError(ConfigError):
    """The run cannot fit speed.memory_budget even with every lever at its most frugal."""


@dataclass
class LeverChange:
    lever: str  # the config key
    value: Any
    reason: str


@dataclass
class MemoryPlan:
    """What the planner decided: the budget, the predicted peak and the levers it set, each with why."""

    budget: str  # where the budget came from, in words
    budget_gib: float | None  # what the caching allocator may reserve; None: no planning
    processes: int = 1  # the budget and the prediction are each process's
    parallelism: str = "none"  # none, ddp or fsdp: whether each process holds the whole model
    predicted_peak_gib: float | None = None  # allocated, as torch.cuda.max_memory_allocated reports it
    predicted_reserved_gib: float | None = None
    fits: bool | None = None
    levers: list[LeverChange] = field(default_factory=list)
    terms_gib: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line for the budget and the prediction, then one per lever set, then the notes."""
        if self.budget_gib is None:
            return [f"memory plan: none ({self.budget})", *self.notes]
        verdict = "fits" if self.fits else "does NOT fit"
        lines = [
            f"memory plan: {self.budget}: {self.budget_gib:.1f} GiB; predicted peak"
            f"{each_process(self.processes, self.parallelism)} "
            f"{self.predicted_peak_gib:.1f} GiB allocated, {self.predicted_reserved_gib:.1f} GiB reserved: {verdict}"
        ]
        lines += [f"  {change.lever} = {change.value}: {change.reason}" for change in self.levers]
        if not self.levers:
            lines.append("  levers as configured")
        return lines + [f"  note: {note}" for note in self.notes]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reserved_bytes(estimate_: MemoryEstimate, levers: Levers) -> float:
    return estimate_.peak_bytes * (1 + (EXPANDABLE_SLACK if levers.expandable_segments else ALLOCATOR_SLACK))


@dataclass
class _Search:
    """The memory model for one run, with the packed rows of each row capacity worked out once."""

    shape: ModelShape
    settings: MemorySettings
    rows_for: Callable[[int], Rows]
    budget: float

    def estimate(self, levers: Levers) -> MemoryEstimate:
        return estimate(self.shape, self.settings, levers, self.rows_for(levers.row_tokens))

    def fits(self, levers: Levers) -> bool:
        return self.reserved(levers) <= self.budget

    def reserved(self, levers: Levers) -> float:
        return reserved_bytes(self.estimate(levers), levers)

    def first_fitting(self, current: Levers, candidates: list[Levers]) -> tuple[Levers, bool]:
        """The first candidate that fits (they go from least to most frugal); else the first that gets lowest, if that
        is lower than `current` (a lever that does not lower the peak, e.g. smaller loss chunks when a layer's
        backward pass sets it, is left alone)."""
        best, lowest = current, self.reserved(current)
        for candidate in candidates:
            reserved = self.reserved(candidate)
            if reserved <= self.budget:
                return candidate, True
            if reserved < lowest:
                best, lowest = candidate, reserved
        return best, False


def plan_memory(
    cfg: RunConfig,
    shape: ModelShape,
    settings: MemorySettings,
    rows_for: Callable[[int], Rows],
    budget_bytes: float,
    budget: str,
) -> tuple[MemoryPlan, Levers]:
    """The levers that fit `budget_bytes` of reserved memory, changing only what the user did not set.

    Raises MemoryBudgetError when not even the most frugal levers fit.
    """
    search = _Search(shape, settings, rows_for, budget_bytes)
    configured = Levers.from_run(cfg)
    speed_set, train_set = cfg.speed.model_fields_set, cfg.train.model_fields_set
    free = {
        "checkpoint_fraction": settings.gradient_checkpointing and "checkpoint_fraction" not in speed_set,
        "loss_chunk_tokens": "loss_chunk_tokens" not in train_set,
        "offload_activations": cfg.speed.offload_activations == "auto",
        "packed_row_tokens": settings.packing and "packed_row_tokens" not in speed_set,
    }
    chosen, fitted = _choose(search, configured, cfg.data.max_length, free)
    if not fitted:
        everything = {lever: lever != "checkpoint_fraction" or settings.gradient_checkpointing for lever in free}
        frugal, could_fit = _choose(search, configured, cfg.data.max_length, everything)
        held = [lever for lever in free if everything[lever] and not free[lever]]
        if not could_fit:
            _raise_cannot_fit(search, frugal, budget_bytes, budget)
        warning = (
            f"the predicted peak does not fit {budget} ({budget_bytes / GIB:.1f} GiB) with the settings you wrote "
            f"({', '.join(_key(lever) for lever in held)}); it would with {_describe(frugal)}"
        )
    final = search.estimate(chosen)
    plan = MemoryPlan(
        budget=budget,
        budget_gib=budget_bytes / GIB,
        processes=settings.processes,
        parallelism=parallelism_name(settings),
        predicted_peak_gib=final.peak_gib,
        predicted_reserved_gib=reserved_bytes(final, chosen) / GIB,
        fits=fitted,
        levers=_changes(configured, chosen, search),
        terms_gib={name: round(value / GIB, 3) for name, value in final.terms().items()},
        notes=list(final.notes),
    )
    if not fitted:
        plan.notes.insert(0, warning)
    return plan, chosen


def each_process(processes: int, parallelism: str) -> str:
    """What a peak of several processes is: each one's (empty for one process)."""
    return f" per process ({parallelism}, {processes} processes)" if processes > 1 else ""


def parallelism_name(settings: MemorySettings) -> str:
    """As env.json's batch layout names it (train/parallel.py): one process holds the whole model whatever it says."""
    return "none" if settings.processes == 1 else "fsdp" if settings.fsdp else "ddp"


def _choose(search: _Search, levers: Levers, max_length: int, free: dict[str, bool]) -> tuple[Levers, bool]:
    """Walk the levers cheapest first; each goes only as far as needed, or all the way before the next one."""
    if search.fits(levers):
        return levers, True
    levers, fitted = search.first_fitting(levers, [replace(levers, expandable_segments=True)])
    if fitted:
        return levers, True
    if free["checkpoint_fraction"]:
        layers = search.shape.layers
        now = levers.checkpointed_layers(search.shape, search.settings)
        levers, fitted = search.first_fitting(
            levers, [replace(levers, checkpoint_fraction=count / layers) for count in range(now + 1, layers + 1)]
        )
        if fitted:
            return levers, True
    if free["loss_chunk_tokens"]:
        chunks = [size for size in (512, SMALLEST_LOSS_CHUNK) if size < levers.loss_chunk_tokens]
        levers, fitted = search.first_fitting(levers, [replace(levers, loss_chunk_tokens=size) for size in chunks])
        if fitted:
            return levers, True
    if free["offload_activations"] and not levers.offload_activations:
        levers, fitted = search.first_fitting(levers, [replace(levers, offload_activations=True)])
        if fitted:
            return levers, True
    if free["packed_row_tokens"]:
        sizes, size = [], levers.row_tokens
        while size > max_length:
            size = max(max_length, size // 2)
            sizes.append(size)
        levers, fitted = search.first_fitting(levers, [replace(levers, row_tokens=size) for size in sizes])
    return levers, fitted


LEVER_KEYS = {
    "expandable_segments": "allocator",
    "checkpoint_fraction": "speed.checkpoint_fraction",
    "loss_chunk_tokens": "train.loss_chunk_tokens",
    "offload_activations": "speed.offload_activations",
    "packed_row_tokens": "speed.packed_row_tokens",
    "row_tokens": "speed.packed_row_tokens",
}


def _key(lever: str) -> str:
    return LEVER_KEYS[lever]


def _describe(levers: Levers) -> str:
    return (
        f"checkpoint_fraction {levers.checkpoint_fraction:.2f}, loss_chunk_tokens {levers.loss_chunk_tokens}, "
        f"offload_activations {str(levers.offload_activations).lower()}, packed_row_tokens {levers.row_tokens:,}"
    )


def _changes(before: Levers, after: Levers, search: _Search) -> list[LeverChange]:
    """Each lever the plan moved, with what it saves (the prediction with it against without it)."""
    changes, current = [], before
    reasons = {
        "expandable_segments": "expandable segments (the default allocator reserves up to 1.4x the allocated peak)",
        "checkpoint_fraction": "more decoder layers recompute their activations in the backward pass",
        "loss_chunk_tokens": "smaller lm_head + cross-entropy chunks",
        "offload_activations": "saved activations go to pinned host memory, copied on a side stream",
        "row_tokens": "smaller packed rows: a step runs as more forward passes",
    }
    for name, reason in reasons.items():
        value = getattr(after, name)
        if value == getattr(before, name):
            continue
        moved = replace(current, **{name: value})
        saved = search.reserved(current) - search.reserved(moved)
        shown = (
            "expandable_segments:True"
            if name == "expandable_segments"
            else f"{value:.2f}"
            if isinstance(value, float)
            else (str(value).lower() if isinstance(value, bool) else value)
        )
        changes.append(LeverChange(_key(name), shown, f"{reason}; {saved / GIB:.1f} GiB less reserved"))
        current = moved
    return changes


def _raise_cannot_fit(search: _Search, frugal: Levers, budget_bytes: float, budget: str) -> None:
    predicted = search.estimate(frugal)
    settings = search.settings
    each = each_process(settings.processes, parallelism_name(settings))
    sharding = "FSDP over more GPUs" if settings.fsdp else "train.parallelism fsdp over several GPUs"
    raise MemoryBudgetError(
        f"training cannot fit {budget} ({budget_bytes / GIB:.1f} GiB for the allocator): the predicted peak{each} "
        f"with the levers that lower it most ({_describe(frugal)}, expandable segments; a lever left at its setting "
        f"lowers nothing here) is {predicted.peak_gib:.1f} GiB allocated, "
        f"{reserved_bytes(predicted, frugal) / GIB:.1f} GiB reserved. Biggest terms: {predicted.biggest_terms()}. "
        f"What is left: a smaller model, a lower lora.r, fewer trained modules (lora.modules_to_save), {sharding}, "
        "or a GPU with more memory"
    )


# ---- budgets -----------------------------------------------------------------------------------
def size_budget(size: str) -> tuple[float, str]:
    """A GPU of `size` (a size string): what the allocator may reserve after the CUDA context and the margin."""
    total = parse_memory_size(size)
    allocator = (total - CUDA_CONTEXT_BYTES) * (1 - AUTO_MARGIN)
    return (
        allocator,
        f"a GPU of {size}, less the CUDA context ({CUDA_CONTEXT_BYTES / GIB:.1f} GiB) and a {AUTO_MARGIN:.0%} margin",
    )


def device_budget(device: Any) -> tuple[float, str]:
    """The device's free memory, within the process's memory fraction if one is set, less the margin."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    fraction = memory_fraction(device)
    room = min(free, fraction * total - torch.cuda.memory_reserved(device))
    capped = f", capped at {fraction * total / GIB:.1f} GiB for this process" if fraction < 1 else ""
    return room * (
        1 - AUTO_MARGIN
    ), f"speed.memory_budget auto: {free / GIB:.1f} GiB free on {device}{capped}, less a {AUTO_MARGIN:.0%} margin"


def run_rows(cfg: RunConfig, lengths: list[int], steps: int, processes: int) -> Callable[[int], Rows]:
    """Rows of the run's steps for a row capacity, each capacity worked out once."""
    found: dict[int, Rows] = {}
    train = cfg.train

    def rows_for(capacity: int) -> Rows:
        if capacity not in found:
            found[capacity] = packed_rows(
                lengths,
                train.samples_per_step(),
                range(steps),
                train.seed,
                capacity if train.packing else None,
                train.per_device_batch_size,
                processes,
            )
        return found[capacity]

    return rows_for


def with_levers(cfg: RunConfig, levers: Levers) -> RunConfig:
    """A copy of `cfg` with the chosen levers. The user's config stays as written: it is what config.resolved.yaml
    records (and `ablate` compares); the levers are recorded in env.json's memory_plan."""
    effective = cfg.model_copy(deep=True)
    effective.speed.checkpoint_fraction = levers.checkpoint_fraction
    effective.speed.offload_activations = levers.offload_activations
    effective.train.loss_chunk_tokens = levers.loss_chunk_tokens
    if cfg.row_tokens() != levers.row_tokens:
        effective.speed.packed_row_tokens = levers.row_tokens
    return effective


def plan_for_run(
    cfg: RunConfig,
    lengths: list[int],
    steps: int,
    device: Any,
    processes: int,
    fsdp: bool,
    budget_size: str | None = None,
    training: bool = True,
) -> tuple[MemoryPlan, RunConfig]:
    """The memory plan of one of `processes` processes on `device` (or, with `budget_size`, on a GPU of that size, as
    `check` asks), and the config training runs with: `cfg` with the plan's levers. `fsdp`: the processes shard the
    model (train.parallelism fsdp). `training` also sets the allocator for this process. No planning on CPU."""
    from medtune.model.memory import liger_installed, read_model_shape

    if budget_size is None and getattr(device, "type", "cuda") != "cuda":
        effective = cfg.model_copy(deep=True)
        if cfg.speed.offload_activations == "auto":  # only a plan turns it on
            effective.speed.offload_activations = False
        return MemoryPlan(budget="training on the CPU: no GPU memory to plan", budget_gib=None), effective
    if budget_size is not None:
        budget_bytes, budget = size_budget(budget_size)
    elif cfg.speed.memory_budget == "auto":
        budget_bytes, budget = device_budget(device)
    else:
        sized, _ = size_budget(cfg.speed.memory_budget)
        room, _ = device_budget(device)
        budget_bytes = min(sized, room)
        budget = (
            f"speed.memory_budget {cfg.speed.memory_budget}, less the CUDA context and a {AUTO_MARGIN:.0%} margin"
            + (f" (the device has less free: {room / GIB:.1f} GiB)" if room < sized else "")
        )
    shape = read_model_shape(cfg.model)
    settings = MemorySettings.from_run(cfg, liger=liger_installed(), processes=processes, fsdp=fsdp)
    plan, levers = plan_memory(cfg, shape, settings, run_rows(cfg, lengths, steps, processes), budget_bytes, budget)
    if training and levers.expandable_segments:
        expandable_segments(device)
    return plan, with_levers(cfg, levers)


def expandable_segments(device: Any) -> None:
    """Turn on the allocator's expandable segments before the model's first allocation, keeping a per-process memory
    fraction set earlier (newer torch parses it among the same allocator settings)."""
    import torch

    fraction = memory_fraction(device)
    torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    if memory_fraction(device) != fraction:
        torch.cuda.set_per_process_memory_fraction(fraction, device)


def memory_fraction(device: Any) -> float:
    """This process's memory fraction (torch.cuda.set_per_process_memory_fraction); torch before 2.6 cannot tell: 1."""
    import torch

    query = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    return query(device) if query is not None else 1.0
