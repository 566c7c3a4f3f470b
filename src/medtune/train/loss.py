"""Causal-LM loss from hidden states: lm_head and cross-entropy fused in chunks, summed per span.

The 151k-token head would materialise tokens x 151,936 fp32 logits (0.6 MB per token); here only the
trained positions go through the head, a chunk at a time, and each chunk's logits are recomputed in the
backward pass instead of being kept. The function returns *sums*, so the caller can divide by the token
count of the whole optimizer step: the loss is then a token-weighted mean that does not depend on how
the step is split into micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from medtune.data.render import SPAN_ANSWER, SPAN_THINK


@dataclass
class LossSums:
    """Summed token losses: overall (with grad) and per span (detached, for logging)."""

    total: torch.Tensor
    think: torch.Tensor
    answer: torch.Tensor


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="none")


def chunked_head_loss(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Per-token cross-entropy of `head(hidden)` against `targets`, never holding more than one chunk of logits."""
    losses = []
    for start in range(0, hidden.shape[0], chunk_tokens):
        chunk_h, chunk_t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if torch.is_grad_enabled():
            losses.append(checkpoint(_chunk_loss, head, chunk_h, chunk_t, use_reentrant=False))
        else:
            losses.append(_chunk_loss(head, chunk_h, chunk_t))
    return torch.cat(losses)


def causal_lm_loss_sums(model: nn.Module, batch: dict[str, torch.Tensor], chunk_tokens: int) -> LossSums:
    """Forward the backbone, then the chunked head on the positions that have a label.

    `model` is a (PEFT-wrapped) *ForCausalLM. `batch` (see data.batching) holds input_ids and either
    attention_mask (padded rows) or position_ids (packed rows, attention kept inside each sample), plus
    `loss_index` (flat positions whose next token is trained), `loss_targets` and `loss_spans`, built on
    the host so that selecting them needs no device synchronisation.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    hidden = causal_lm.model(**backbone_inputs, use_cache=False).last_hidden_state
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["loss_index"])
    token_losses = chunked_head_loss(causal_lm.get_output_embeddings(), selected, batch["loss_targets"], chunk_tokens)
    detached = token_losses.detach()
    spans = batch["loss_spans"]
    return LossSums(
        total=token_losses.sum(),
        think=(detached * (spans == SPAN_THINK)).sum(),
        answer=(detached * (spans == SPAN_ANSWER)).sum(),
    )
