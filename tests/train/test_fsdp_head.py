"""FSDP shards a trained, untied lm_head through the fused head loss (train/fsdp.py, train/loss.py): each of two gloo
processes keeps half of its weight, the head is gathered for the loss and sharded again after the backward pass and
after an eval forward, and its gradient is the one a single process computes over both processes' tokens."""

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
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(100 + rank))
    positions = torch.arange(11)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "loss_index": positions,
        "loss_targets": ids[0, 1:],
        "loss_spans": torch.zeros(11, dtype=torch.long),
    }


def head_of(model: PeftModel) -> torch.Tensor:
    return model.get_base_model().lm_head.modules_to_save["default"].weight


def _sharded_head(rank: int, init_file: str) -> None:
    reference = v2_model()  # before the process group: one process's gradient over both processes' tokens
    total = sum(
        causal_lm_loss_sums(reference, batch_of(r), FusedHeadLoss.of(reference, CHUNK_TOKENS)).total for r in (0, 1)
    )
    total.backward()
    expected = head_of(reference).grad

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=PROCESSES)
    model = v2_model()
    head_loss = FusedHeadLoss.of(model, CHUNK_TOKENS)
    shard_model(model, head_loss, DistContext(rank=rank, world_size=PROCESSES))
    head = head_of(model)
    assert isinstance(head, DTensor) and head.to_local().shape[0] == head.shape[0] // PROCESSES

    with torch.no_grad():  # eval: gathered for the forward, sharded again after it
        causal_lm_loss_sums(model, batch_of(rank), head_loss)
    assert isinstance(head_of(model), DTensor)

    causal_lm_loss_sums(model, batch_of(rank), head_loss).total.backward()
    assert isinstance(head_of(model), DTensor) and isinstance(head_of(model).grad, DTensor)
    assert torch.allclose(head_of(model).grad.full_tensor(), expected, rtol=1e-4, atol=1e-6)
    leave_process_group()


def test_a_trained_untied_head_is_sharded_and_gets_the_whole_steps_gradient(tmp_path):
    torch.multiprocessing.spawn(_sharded_head, args=(str(tmp_path / "rendezvous"),), nprocs=PROCESSES)
