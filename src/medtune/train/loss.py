"""Causal-LM loss from hidden states: lm_head and cross-entropy fused in chunks, summed per span.

The 151k-token head would materialise tokens x 151,936 fp32 logits (0.6 MB per token); here only the
trained positions go through the head, a chunk at a time. Each chunk's gradient (softmax minus one-hot,
times the head) is computed right after its loss, in the forward pass, so the logits are neither kept nor
recomputed: the backward pass only scales the stored gradients by the incoming one.
The function returns *sums*, so the caller can divide by the token count of the whole optimizer step: the
loss is then a token-weighted mean that does not depend on how the step is split into micro-batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from medtune.data.batching import micro_batches, to_device
from medtune.data.render import SPAN_ANSWER, SPAN_THINK, Encoded


@dataclass
class LossSums:
    """Summed token losses: overall (with grad) and per span (detached, for logging)."""

    total: torch.Tensor
    think: torch.Tensor
    answer: torch.Tensor


class _LinearCrossEntropySum(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i), with the per-token losses as a second, non-differentiable output."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int):
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        hidden = hidden.to(weight.dtype)
        token_losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        # fp32 accumulation across chunks, rounded once to the weight's dtype at the end, as one matmul would be
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if weight.requires_grad else None
        )
        for start in range(0, hidden.shape[0], chunk_tokens):
            chunk, chunk_targets = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
            logits = (chunk @ weight.T).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            token_losses[start : start + chunk_tokens] = log_norm - logits.gather(1, chunk_targets[:, None]).squeeze(1)
            probs = logits.sub_(log_norm[:, None]).exp_()  # softmax in place: the logits are not needed again
            probs[torch.arange(chunk.shape[0], device=chunk.device), chunk_targets] -= 1.0
            grad_logits = probs.to(weight.dtype)
            grad_hidden[start : start + chunk_tokens] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight.add_(grad_logits.T @ chunk)
            del logits, probs, grad_logits  # before the next chunk's logits exist: one chunk's worth alive, not two
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(token_losses)
        return token_losses.sum(), token_losses

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor, _grad_token_losses: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = (grad_hidden.float() * grad_total).to(ctx.hidden_dtype)  # fp32: 1/tokens is not a bf16 number
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_total).to(ctx.weight_dtype)  # in place: no second fp32 head-sized copy
        return grad_hidden, grad_weight, None, None


class _VocabShardedLinearCrossEntropySum(torch.autograd.Function):
    """`_LinearCrossEntropySum` with the weight's rows (the vocabulary) split over the processes of `group`.

    Every process takes every process's hidden states (an all-gather: tokens x hidden, small next to the head) and
    computes the logits of its own rows only; the softmax's normaliser joins the processes' partial log-sum-exps (one
    all-gather of two numbers per token). So no process ever holds the whole head, its whole gradient or a whole fp32
    accumulator, and the head's gradient needs no reduction: each process's rows get every token's contribution.
    The gradients are made in the backward pass, once each process's scale of the loss is known (a micro-batch that
    only pads a process's count to the others' has scale 0): the logits are computed again there, a fourth head-sized
    matmul. The hidden states' gradient is summed over the processes' rows and each keeps its own tokens' part.
    Returns this process's tokens' loss sum and losses, as the unsharded function does.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk_tokens: int,
        vocab_start: int,
        group: dist.ProcessGroup,
    ):
        everyone, everyone_targets, log_norm, counts, token_losses = _vocab_sharded_losses(
            hidden, weight, targets, chunk_tokens, vocab_start, group
        )
        ctx.save_for_backward(everyone, weight, everyone_targets, log_norm)
        ctx.counts, ctx.chunk_tokens, ctx.vocab_start, ctx.group = counts, chunk_tokens, vocab_start, group
        ctx.hidden_dtype = hidden.dtype
        ctx.mark_non_differentiable(token_losses)
        return token_losses.sum(), token_losses

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor, _grad_token_losses: torch.Tensor):
        everyone, weight, targets, log_norm = ctx.saved_tensors
        counts, group = ctx.counts, ctx.group
        scales = grad_total.new_empty(len(counts), dtype=torch.float32)  # each process's scale of its tokens' loss
        dist.all_gather_into_tensor(scales, grad_total.float().reshape(1), group=group)
        token_scales = torch.repeat_interleave(scales, torch.tensor(counts, device=everyone.device))
        grad_everyone = torch.empty(everyone.shape, dtype=torch.float32, device=everyone.device)
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        )
        rows = torch.arange(min(ctx.chunk_tokens, everyone.shape[0]), device=everyone.device)
        for start in range(0, everyone.shape[0], ctx.chunk_tokens):
            chunk = everyone[start : start + ctx.chunk_tokens]
            probs = (chunk @ weight.T).float().sub_(log_norm[start : start + ctx.chunk_tokens, None]).exp_()
            local_targets = targets[start : start + ctx.chunk_tokens] - ctx.vocab_start
            owned = (local_targets >= 0) & (local_targets < weight.shape[0])
            probs[rows[: chunk.shape[0]][owned], local_targets[owned]] -= 1.0
            grad_logits = probs.mul_(token_scales[start : start + ctx.chunk_tokens, None]).to(weight.dtype)
            grad_everyone[start : start + ctx.chunk_tokens] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight.add_(grad_logits.T @ chunk)
            del probs, grad_logits
        grad_hidden = _sum_rows_keep_mine(grad_everyone, counts, group).to(ctx.hidden_dtype)
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        return grad_hidden, grad_weight, None, None, None, None


def _vocab_sharded_losses(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_tokens: int,
    vocab_start: int,
    group: dist.ProcessGroup,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
    """Every process's hidden states and targets, each token's log-normaliser, every process's token count, and this
    process's tokens' losses: the forward pass, for training and eval alike."""
    counts = _token_counts(hidden.shape[0], group, hidden.device)
    everyone = _gather_rows(hidden.to(weight.dtype), counts, group)
    everyone_targets = _gather_rows(targets, counts, group)
    log_norm, target_logits = _sharded_log_norm_and_target_logits(
        everyone, weight, everyone_targets, chunk_tokens, vocab_start, group
    )
    rank = dist.get_rank(group)
    token_losses = (log_norm - target_logits)[sum(counts[:rank]) : sum(counts[: rank + 1])].contiguous()
    return everyone, everyone_targets, log_norm, counts, token_losses


def _token_counts(count: int, group: dist.ProcessGroup, device: torch.device) -> list[int]:
    counts = torch.zeros(dist.get_world_size(group), dtype=torch.long, device=device)
    dist.all_gather_into_tensor(counts, torch.tensor([count], dtype=torch.long, device=device), group=group)
    return counts.tolist()


def _gather_rows(rows: torch.Tensor, counts: list[int], group: dist.ProcessGroup) -> torch.Tensor:
    """Every process's `rows` (counts[p] of them on process p), concatenated in process order."""
    most = max(counts)
    padded = rows.new_zeros((most, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = rows.new_empty((len(counts) * most, *rows.shape[1:]))
    dist.all_gather_into_tensor(gathered, padded, group=group)
    return torch.cat([gathered[p * most : p * most + count] for p, count in enumerate(counts)])


def _sum_rows_keep_mine(rows: torch.Tensor, counts: list[int], group: dist.ProcessGroup) -> torch.Tensor:
    """Sum every process's `rows` (all processes' tokens, in process order) and keep this process's tokens' part."""
    most = max(counts)
    padded = rows.new_zeros((len(counts) * most, *rows.shape[1:]))
    start = 0
    for p, count in enumerate(counts):
        padded[p * most : p * most + count] = rows[start : start + count]
        start += count
    mine = rows.new_empty((most, *rows.shape[1:]))
    dist.reduce_scatter_tensor(mine, padded, group=group)
    return mine[: counts[dist.get_rank(group)]]


def _sharded_log_norm_and_target_logits(
    everyone: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_tokens: int,
    vocab_start: int,
    group: dist.ProcessGroup,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, over the whole vocabulary: log-sum-exp of the logits and the target's logit, from each process's
    rows (the target's logit comes from the one process that holds the target's row)."""
    partial = torch.zeros(2, everyone.shape[0], dtype=torch.float32, device=everyone.device)
    for start in range(0, everyone.shape[0], chunk_tokens):
        logits = (everyone[start : start + chunk_tokens] @ weight.T).float()
        partial[0, start : start + chunk_tokens] = torch.logsumexp(logits, dim=-1)
        local_targets = targets[start : start + chunk_tokens] - vocab_start
        owned = (local_targets >= 0) & (local_targets < weight.shape[0])
        picked = logits.gather(1, local_targets.clamp(0, max(weight.shape[0] - 1, 0))[:, None]).squeeze(1)
        partial[1, start : start + chunk_tokens] = torch.where(owned, picked, 0.0)
        del logits
    processes = dist.get_world_size(group)
    gathered = partial.new_empty((processes * 2, partial.shape[1]))  # concatenated along the first dimension
    dist.all_gather_into_tensor(gathered, partial, group=group)
    gathered = gathered.view(processes, 2, -1)
    return torch.logsumexp(gathered[:, 0], dim=0), gathered[:, 1].sum(dim=0)


def vocab_sharded_linear_cross_entropy(
    hidden: torch.Tensor, weight: DTensor, targets: torch.Tensor, chunk_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`linear_cross_entropy` for a weight sharded by rows over a one-dimensional mesh (FSDP's trained lm_head,
    train/fsdp.py): a collective, every process of the mesh calls it on its own tokens, in step."""
    group = weight.device_mesh.get_group()
    processes, rank = dist.get_world_size(group), dist.get_rank(group)
    rows_per_process = -(-weight.shape[0] // processes)  # torch.chunk's split, which Shard(0) uses
    vocab_start = min(rank * rows_per_process, weight.shape[0])
    local = weight.to_local()  # with autograd: the local gradient becomes the DTensor parameter's
    if torch.is_grad_enabled() and (hidden.requires_grad or local.requires_grad):
        return _VocabShardedLinearCrossEntropySum.apply(hidden, local, targets, chunk_tokens, vocab_start, group)
    token_losses = _vocab_sharded_losses(hidden, local, targets, chunk_tokens, vocab_start, group)[-1]
    return token_losses.sum(), token_losses


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, per-token losses) of `hidden @ weight.T` against `targets`, one chunk of logits at a time.

    With gradients enabled the sum carries them (to `hidden`, and to `weight` when it is trained); the
    per-token losses are for logging. Without gradients (eval) nothing is stored for a backward pass.
    """
    if isinstance(weight, DTensor):
        return vocab_sharded_linear_cross_entropy(hidden, weight, targets, chunk_tokens)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropySum.apply(hidden, weight, targets, chunk_tokens)
    hidden = hidden.to(weight.dtype)
    token_losses = torch.cat(
        [
            F.cross_entropy(
                (hidden[start : start + chunk_tokens] @ weight.T).float(),
                targets[start : start + chunk_tokens],
                reduction="none",
            )
            for start in range(0, hidden.shape[0], chunk_tokens)
        ]
    )
    return token_losses.sum(), token_losses


class FusedHeadLoss(nn.Module):
    """A model's lm_head and the cross-entropy, fused (`linear_cross_entropy`), as one module.

    The weight is looked up on every call, so PEFT's adapter switches (a disabled adapter's original head) hold. Under
    FSDP a trained, untied head's weight is split by rows over the processes (train/fsdp.py, `shard_rows`) and the
    loss is `vocab_sharded_linear_cross_entropy`.
    """

    def __init__(self, head: nn.Module, chunk_tokens: int) -> None:
        super().__init__()
        self.head = head
        self.chunk_tokens = chunk_tokens

    @classmethod
    def of(cls, model: nn.Module, chunk_tokens: int) -> FusedHeadLoss:
        """The head loss of a (PEFT-wrapped) *ForCausalLM."""
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        return cls(causal_lm.get_output_embeddings(), chunk_tokens)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return linear_cross_entropy(hidden, head_weight(self.head), targets, self.chunk_tokens)


def head_weight(head: nn.Module) -> torch.Tensor:
    """The matrix of a bias-free linear head (PEFT's trained copy when the head is in modules_to_save)."""
    if getattr(head, "bias", None) is not None:
        raise ValueError("the fused lm_head + cross-entropy needs a head without bias, as Qwen3's")
    return head.weight


def packing_kwargs(batch: dict[str, Any]) -> dict[str, Any]:
    """The sample boundaries of a packed row, under the names transformers' varlen attention paths read."""
    if "sample_lengths" not in batch:
        return {}
    longest = max(batch["sample_lengths"])
    return {
        "cu_seq_lens_q": batch["cu_seq_lens"],
        "cu_seq_lens_k": batch["cu_seq_lens"],
        "max_length_q": longest,
        "max_length_k": longest,
        "sample_lengths": batch["sample_lengths"],
    }


def causal_lm_loss_sums(model: nn.Module, batch: dict[str, Any], head_loss: FusedHeadLoss) -> LossSums:
    """Forward the backbone, then the fused head + cross-entropy (`head_loss`, the model's) on the positions that
    have a label.

    `model` is a (PEFT-wrapped) *ForCausalLM. `batch` (see data.batching) holds input_ids and either
    attention_mask (padded rows) or position_ids and sample boundaries (packed rows, attention kept inside
    each sample), plus `loss_index` (flat positions whose next token is trained), `loss_targets` and
    `loss_spans`, built on the host so that selecting them needs no device synchronisation.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    hidden = causal_lm.model(**backbone_inputs, **packing_kwargs(batch), use_cache=False).last_hidden_state
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["loss_index"])
    total, token_losses = head_loss(selected, batch["loss_targets"])
    detached = token_losses.detach()
    spans = batch["loss_spans"]
    return LossSums(
        total=total,
        think=(detached * (spans == SPAN_THINK)).sum(),
        answer=(detached * (spans == SPAN_ANSWER)).sum(),
    )


Forwards = Callable[[list[dict[str, Any]]], list[tuple[dict[str, Any], float]]]
"""Micro-batches -> (micro-batch, loss weight) pairs: `unweighted`, or FSDP's padding to equal counts per process."""


def unweighted(batches: list[dict[str, Any]]) -> list[tuple[dict[str, Any], float]]:
    return [(batch, 1.0) for batch in batches]


@torch.no_grad()
def summed_loss_over(
    model: nn.Module,
    head_loss: FusedHeadLoss,
    encoded: list[Encoded],
    *,
    batch_size: int,
    row_tokens: int,
    packing: bool,
    pad_id: int,
    device: torch.device,
    forwards: Forwards = unweighted,
) -> torch.Tensor:
    """(loss, think, answer) sums over a list of samples: the numerators of eval loss, for training's periodic
    eval and `medtune eval` alike. Divide by `trained_token_counts` of the same samples (summed over processes).
    `forwards` pairs the micro-batches with loss weights (FSDP pads them so every process runs as many forwards)."""
    sums = torch.zeros(3, device=device)
    for batch, weight in forwards(micro_batches(encoded, batch_size, row_tokens, packing, pad_id)):
        loss = causal_lm_loss_sums(model, to_device(batch, device), head_loss)
        sums += weight * torch.stack([loss.total, loss.think, loss.answer])
    return sums
