"""The fused LoRA function against PEFT's LoRA on CUDA, with uint8 4-bit storage and with FSDP's (the compute dtype).

Prints the projections routed (and of those, with the 4-bit base fused in), the loss both ways and the worst relative
gradient error over the trained tensors, under bf16 autocast as training runs. Needs a CUDA GPU and bitsandbytes:
    PYTHONPATH=src python bench/fused_lora_gpu_check.py
"""

from __future__ import annotations

import torch

from medtune.config import LoraConfig, ModelConfig, QuantConfig
from medtune.model.load import apply_lora, load_base_model
from medtune.model.lora_fused import install_fused_lora
from medtune.train.loss import FusedHeadLoss, causal_lm_loss_sums

DEVICE = torch.device("cuda", 0)


def tiny_lora(fsdp_storage: bool) -> torch.nn.Module:
    """The tiny model in 4-bit NF4 with LoRA on every projection, B non-zero so the adapter matters."""
    model = load_base_model(ModelConfig(name_or_path="tiny"), QuantConfig(), DEVICE, fsdp=fsdp_storage).model
    torch.manual_seed(0)
    model = apply_lora(model, LoraConfig(dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    model.get_base_model().enable_input_require_grads()
    return model


def loss_and_grads(model: torch.nn.Module, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = causal_lm_loss_sums(model, batch, FusedHeadLoss.of(model, 16)).total
    loss.backward()
    return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}


def main() -> None:
    ids = torch.randint(0, 1000, (1, 64), device=DEVICE)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "loss_index": torch.arange(63, device=DEVICE),
        "loss_targets": ids[0, 1:],
        "loss_spans": torch.zeros(63, dtype=torch.long, device=DEVICE),
    }
    for fsdp_storage in (False, True):
        model = tiny_lora(fsdp_storage)
        peft_loss, peft_grads = loss_and_grads(model, batch)
        routed = install_fused_lora(model)
        fused_loss, fused_grads = loss_and_grads(model, batch)
        worst = max(((peft_grads[k] - fused_grads[k]).norm() / peft_grads[k].norm()).item() for k in peft_grads)
        print(
            f"fsdp_storage={fsdp_storage} fused={routed} loss peft={peft_loss:.6f} fused={fused_loss:.6f} "
            f"worst grad rel err={worst:.2e}"
        )


if __name__ == "__main__":
    main()
