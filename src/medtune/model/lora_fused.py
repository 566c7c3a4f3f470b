"""LoRA around a frozen (4-bit) projection as one autograd function: y = base(x) + s * B(A(dropout(x))).

PEFT's forward for each LoRA projection (196 in Qwen3-1.7B) clones the base output, writes a dropped-out copy
of the input, then scales and adds in passes of their own, and keeps the dropped-out copy (2 bytes per input
feature) and its mask (1 byte) for the backward pass. Here only the mask is kept and the dropped-out input is
rebuilt from it in the backward pass; the input itself is kept as it came (q/k/v share one input, gate/up
another), and the scale and the add ride in the second matmul (`addmm`). Same math and dtypes as PEFT
(autocast's dtype when autocast is on, else the adapter's; the same dropout kernel and random stream, so
checkpoint recomputation replays the mask), fewer passes over [tokens x features], a third of the memory.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

class FusedLora(torch.autograd.Function):
    """base_out + scale * (dropout(x) @ A^T) @ B^T; keeps x, A, B, the dropout mask and the rank-r product."""

    @staticmethod
    def forward(ctx: Any, base_out: torch.Tensor, x: torch.Tensor, weight_a: torch.Tensor, weight_b: torch.Tensor,
                scale: float, p: float) -> torch.Tensor:
        device = x.device.type
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight_a.dtype
        with torch.autocast(device, enabled=False):
            inputs = x.reshape(-1, x.shape[-1]).to(compute)
            mask = None
            if p > 0:
                inputs, mask = torch.native_dropout(inputs, p, True)
            low_rank = inputs @ weight_a.to(compute).t()
            out = torch.addmm(base_out.reshape(-1, base_out.shape[-1]).to(compute), low_rank, weight_b.to(compute).t(), alpha=scale)
        ctx.save_for_backward(x, weight_a, weight_b, low_rank, mask)
        ctx.scale, ctx.keep_scale, ctx.compute = scale, 1 / (1 - p), compute
        return out.to(base_out.dtype).view(base_out.shape)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight_a, weight_b, low_rank, mask = ctx.saved_tensors
        need_base, need_x, need_a, need_b = ctx.needs_input_grad[:4]
        grad_x = grad_a = grad_b = None
        with torch.autocast(x.device.type, enabled=False):
            grad = grad_out.reshape(-1, grad_out.shape[-1]).to(ctx.compute)
            if need_b:
                grad_b = (grad.t() @ low_rank).mul_(ctx.scale).to(weight_b.dtype)
            grad_low_rank = (grad @ weight_b.to(ctx.compute)).mul_(ctx.scale)
            if need_a:
                inputs = x.reshape(-1, x.shape[-1]).to(ctx.compute)
                inputs = inputs if mask is None else torch.ops.aten.native_dropout_backward(inputs, mask, ctx.keep_scale)
                grad_a = (grad_low_rank.t() @ inputs).to(weight_a.dtype)
            if need_x:
                grad_x = grad_low_rank @ weight_a.to(ctx.compute)
                grad_x = grad_x if mask is None else torch.ops.aten.native_dropout_backward(grad_x, mask, ctx.keep_scale)
                grad_x = grad_x.to(x.dtype).view(x.shape)
        return (grad_out if need_base else None), grad_x, grad_a, grad_b, None, None


def fused_lora_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Forward of a PEFT LoRA layer through `FusedLora`; anything but one plain LoRA adapter goes to PEFT's own."""
    active = self.active_adapters
    if (self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None or len(active) != 1
            or active[0] not in self.lora_A or active[0] in getattr(self, "lora_variant", {})):
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    dropout = self.lora_dropout[name]
    p = dropout.p if self.training and isinstance(dropout, nn.Dropout) else 0.0
    base_out = self.base_layer(x, *args, **kwargs)
    return FusedLora.apply(base_out, x, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name], p)


def install_fused_lora(model: nn.Module) -> int:
    """Route every PEFT LoRA Linear (plain or bitsandbytes 4-bit) of `model` through `FusedLora`; returns how many."""
    from peft.tuners.lora import Linear as LoraLinear

    linear_types: tuple[type, ...] = (LoraLinear,)
    try:
        from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

        linear_types += (LoraLinear4bit,)
    except ImportError:  # peft without bitsandbytes support
        pass
    count = 0
    for module in model.modules():
        if isinstance(module, linear_types):
            module.forward = types.MethodType(fused_lora_forward, module)
            count += 1
    return count
