"""Turn encoded samples into optimizer steps and micro-batches.

Order is a pure function of (seed, epoch): sample position p of the run is index `perm(seed, epoch)[p % n]`
of epoch `p // n`. A checkpoint therefore only needs the number of samples consumed to resume exactly.
Augmentation is applied here, per (epoch, index), so every epoch draws afresh and a resumed run masks
exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from medtune.data.augment import AugmentStats, MaskedTerm
from medtune.data.formats import Sample
from medtune.data.render import IGNORE_INDEX, SPAN_ANSWER, SPAN_THINK, Encoded

AUGMENT_STATS_KEY = "augment_stats"  # in a checkpoint's training state


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(f"medtune-order-{seed}-{epoch}").shuffle(order)
    return order


def step_positions(samples_consumed: int, count: int, n: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, sample index) for the next `count` samples of the run."""
    positions, orders = [], {}
    for p in range(samples_consumed, samples_consumed + count):
        epoch = p // n
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        positions.append((epoch, orders[epoch][p % n]))
    return positions


@dataclass
class TrainingSet:
    """Training samples with their plain encodings and, when augmentation is on, the counts of what it masked.

    `encode_at` applies the augmentation, a pure function of (epoch, index); `draw` does so for the samples a
    run trains on and counts them, so the augmentation statistics belong to the set: it saves, restores and
    summarises them, and answers None for each while augmentation is off.
    """

    samples: list[Sample]
    encoded: list[Encoded]
    encode: Callable[[Sample], Encoded]
    augment: Callable[[Sample, int, int], tuple[Sample, list[MaskedTerm]]] | None = None
    augment_stats: AugmentStats | None = field(init=False)

    def __post_init__(self) -> None:
        self.augment_stats = AugmentStats() if self.augment is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def encode_at(self, epoch: int, index: int) -> tuple[Encoded, list[MaskedTerm]]:
        if self.augment is None:
            return self.encoded[index], []
        sample, masked_terms = self.augment(self.samples[index], epoch, index)
        return (self.encode(sample) if masked_terms else self.encoded[index]), masked_terms

    def draw(self, positions: list[tuple[int, int]]) -> list[Encoded]:
        """The samples at (epoch, index) positions (`step_positions`) as trained on, counted in the statistics."""
        items = []
        for epoch, index in positions:
            encoded, masked_terms = self.encode_at(epoch, index)
            if self.augment_stats is not None:
                self.augment_stats.record(epoch, masked_terms)
            items.append(encoded)
        return items

    def augmentation_epoch(self, epoch: int) -> dict[str, Any] | None:
        """What the augmentation did in one epoch drawn (a metrics.jsonl record's `augment`)."""
        return self.augment_stats.epoch_summary(epoch) if self.augment_stats is not None else None

    def augmentation_summary(self) -> dict[str, Any] | None:
        """What the augmentation did in every epoch drawn so far (summary.json's `augmentation`)."""
        return self.augment_stats.state_dict() if self.augment_stats is not None else None

    def state_dict(self) -> dict[str, Any]:
        """The set's part of a checkpoint's training state: the augmentation statistics (the draw order needs nothing
        saved: it follows from the samples consumed)."""
        return {AUGMENT_STATS_KEY: self.augmentation_summary()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint's training state (whose statistics are ignored while augmentation is off)."""
        if self.augment_stats is not None:
            self.augment_stats.load_state_dict(state.get(AUGMENT_STATS_KEY))


def process_shares(lengths: list[int], processes: int) -> list[list[int]]:
    """Which of a step's samples (by index into `lengths`) each process trains: as many tokens and samples each as
    the lengths allow, every process's indices in the step's order.

    A step's time is its slowest process's, so the split evens out tokens (longest first, each to the process with
    the fewest tokens so far), under a cap of ceil(n / processes) samples each, which keeps micro-batch counts equal
    without packing. Dealing samples round-robin left one process 4.6% above the mean on the shipped data (16 samples
    over 2 processes); this split leaves it 0.4% above.
    """
    cap = -(-len(lengths) // processes)
    tokens, shares = [0] * processes, [[] for _ in range(processes)]
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        process = min((p for p in range(processes) if len(shares[p]) < cap), key=lambda p: tokens[p])
        shares[process].append(index)
        tokens[process] += lengths[index]
    return [sorted(share) for share in shares]


def trained_token_counts(items: list[Encoded]) -> tuple[int, int, int]:
    """(trained, think, answer) tokens of a step: the denominators of its token-weighted losses.

    Computed from the samples themselves, so every data-parallel process knows the whole step's count.
    The first token of a sample is never a target (it is a prompt token), so labels[1:] are the targets.
    """
    total = think = answer = 0
    for e in items:
        for label, span in zip(e.labels[1:], e.span_ids[1:]):
            if label != IGNORE_INDEX:
                total += 1
                think += span == SPAN_THINK
                answer += span == SPAN_ANSWER
    return total, think, answer


def pack_rows(items: list[Encoded], capacity: int) -> list[list[Encoded]]:
    """First-fit decreasing: few rows, each at most `capacity` tokens (one sample may fill a row alone)."""
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for item in sorted(items, key=len, reverse=True):
        for r, free in enumerate(room):
            if len(item) <= free:
                rows[r].append(item)
                room[r] -= len(item)
                break
        else:
            rows.append([item])
            room.append(capacity - len(item))
    return rows


def _loss_selection(labels: torch.Tensor, span_ids: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """Flat positions whose *next* token is trained, with those targets and their spans (host-side)."""
    targets, spans = labels[:, 1:], span_ids[:, 1:]
    keep = targets != IGNORE_INDEX
    row_len = labels.shape[1]
    rows, cols = keep.nonzero(as_tuple=True)
    kept_spans = spans[keep]
    return {
        "loss_index": rows * row_len + cols,
        "loss_targets": targets[keep],
        "loss_spans": kept_spans,
        "n_tokens": int(keep.sum()),
        "n_think": int((kept_spans == SPAN_THINK).sum()),
        "n_answer": int((kept_spans == SPAN_ANSWER).sum()),
    }


def packed_batch(row: list[Encoded]) -> dict[str, torch.Tensor | int]:
    """One row of several samples; position_ids restart at each sample so attention stays inside it.

    The sample lengths (on the host) and their cumulative offsets let a varlen attention kernel see the
    boundaries without deriving them from position_ids on the device, which would need a synchronisation.
    """
    input_ids = torch.tensor([[t for e in row for t in e.input_ids]])
    labels = torch.tensor([[t for e in row for t in e.labels]])
    span_ids = torch.tensor([[s for e in row for s in e.span_ids]])
    position_ids = torch.tensor([[p for e in row for p in range(len(e))]])
    lengths = [len(e) for e in row]
    boundaries = {
        "sample_lengths": lengths,
        "cu_seq_lens": torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32),
    }
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "n_input": input_ids.numel(),
        **boundaries,
        **_loss_selection(labels, span_ids),
    }


def padded_batch(group: list[Encoded], pad_id: int) -> dict[str, torch.Tensor | int]:
    """Right-padded rows with an attention mask, as the reference experiment's collator made them."""
    width = max(len(e) for e in group)
    pad = [width - len(e) for e in group]
    input_ids = torch.tensor([e.input_ids + [pad_id] * p for e, p in zip(group, pad)])
    labels = torch.tensor([e.labels + [IGNORE_INDEX] * p for e, p in zip(group, pad)])
    span_ids = torch.tensor([e.span_ids + [0] * p for e, p in zip(group, pad)])
    attention_mask = torch.tensor([[1] * len(e) + [0] * p for e, p in zip(group, pad)])
    n_input = sum(len(e) for e in group)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "n_input": n_input,
        **_loss_selection(labels, span_ids),
    }


def micro_batches(
    items: list[Encoded], batch_size: int, row_tokens: int, packing: bool, pad_id: int
) -> list[dict[str, torch.Tensor | int]]:
    """Split one optimizer step's samples into micro-batches: packed rows of at most `row_tokens` tokens, or
    (without packing) padded batches of `batch_size` samples."""
    if packing:
        return [packed_batch(row) for row in pack_rows(items, row_tokens)]
    return [padded_batch(items[i : i + batch_size], pad_id) for i in range(0, len(items), batch_size)]


def to_device(batch: dict[str, torch.Tensor | int], device: torch.device) -> dict[str, torch.Tensor | int]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
