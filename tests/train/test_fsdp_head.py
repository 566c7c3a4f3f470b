"""FSDP splits a trained, untied lm_head by rows (train/fsdp.py) and the fused head loss computes each process's rows'
logits for every process's tokens (train/loss.py): each of two gloo processes keeps half of the weight and never the
whole, with unequal token counts, an eval forward and a zero-weight forward too, and losses and gradients (the head's,
and through the hidden states the decoder layers') are the ones a single process computes over both processes'
tokens."""

from __future__ import annotations

import torch
import torch.distributed as dist
from peft import PeftModel
from tests.conftest import leave_process_group
from torch.distributed.tensor import DTensor

from medtune.config import LoraConfig, ModelConfig, QuantConfig
from medtune.model.load import apply_lora, load_base_model
from medtune.train.distributed import DistContext
from medtune.train.fsdp import shard_model
from medtune.train.loss import FusedHeadLoss, causal_lm_loss_sums

CPU = torch.device("cpu")
PROCESSES = 2
CHUNK_TOKENS = 8


def v2_model() -> PeftModel:
    """The tiny model with LoRA and both embeddings trained as untied copies (the layout of Qwen3 8B and larger)."""
    loaded = load_base_model(ModelConfig(), QuantConfig(), CPU, fsdp=True)
    torch.manual_seed(0)
    lora = LoraConfig(dropout=0.0, modules_to_save=["embed_tokens", "lm_head"], tied_embeddings="untie")
    return apply_lora(loaded.model, lora)


def batch_of(rank: int) -> dict[str, torch.Tensor]:
    """Rank 0 trains 11 tokens, rank 1 7: the loss gathers unequal counts."""
    length = 12 if rank == 0 else 8
    ids = torch.randint(0, 1000, (1, length), generator=torch.Generator().manual_seed(100 + rank))
    positions = torch.arange(length - 1)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "loss_index": positions,
        "loss_targets": ids[0, 1:],
        "loss_spans": torch.zeros(length - 1, dtype=torch.long),
    }


def head_of(model: PeftModel) -> torch.Tensor:
    return model.get_base_model().lm_head.modules_to_save["default"].weight


def lora_of(model: PeftModel) -> torch.Tensor:
    return model.get_base_model().model.layers[0].self_attn.q_proj.lora_B["default"].weight


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _sharded_head(rank: int, init_file: str) -> None:
    reference = v2_model()  # before the process group: one process's losses and gradients over both processes' tokens
    reference_loss = FusedHeadLoss.of(reference, CHUNK_TOKENS)
    losses = [causal_lm_loss_sums(reference, batch_of(r), reference_loss).total for r in (0, 1)]
    sum(losses).backward()
    expected_head, expected_lora = head_of(reference).grad, lora_of(reference).grad

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=PROCESSES)
    model = v2_model()
    head_loss = FusedHeadLoss.of(model, CHUNK_TOKENS)
    shard_model(model, head_loss, DistContext(rank=rank, world_size=PROCESSES))
    head = head_of(model)
    assert isinstance(head, DTensor) and head.to_local().shape[0] == head.shape[0] // PROCESSES

    with torch.no_grad():  # eval: each process's own tokens' loss
        evaluated = causal_lm_loss_sums(model, batch_of(rank), head_loss).total
    assert torch.allclose(evaluated, losses[rank].detach(), rtol=1e-5)

    trained = causal_lm_loss_sums(model, batch_of(rank), head_loss).total
    assert torch.allclose(trained, losses[rank].detach(), rtol=1e-5)
    trained.backward()
    padding = causal_lm_loss_sums(model, batch_of(1 - rank), head_loss).total  # FSDP's zero-weight forward
    (padding * 0.0).backward()
    assert isinstance(head_of(model), DTensor) and isinstance(head_of(model).grad, DTensor)
    assert torch.allclose(whole(head_of(model).grad), expected_head, rtol=1e-4, atol=1e-6)
    assert torch.allclose(whole(lora_of(model).grad), expected_lora, rtol=1e-4, atol=1e-6)
    leave_process_group()


def test_a_trained_untied_head_is_split_by_rows_and_gets_the_whole_steps_gradient(tmp_path):
    torch.multiprocessing.spawn(_sharded_head, args=(str(tmp_path / "rendezvous"),), nprocs=PROCESSES)
