"""A LoRA projection as one autograd function: y = x @ W^T + s * B(A(dropout(x))), W the frozen (4-bit) base.

A training step on a GPU is bound by the host, not the GPU (bench/RESULTS.md, call 4: the device sat idle 68% of
a profiled v2 step); most of the host's work is the 196 LoRA projections of Qwen3-1.7B, each a chain of Python
layers (PEFT's LoRA layer, bitsandbytes' Linear4bit, its autograd function, double-quant dequantization in three
kernels) that PEFT runs once per pass. Here a projection is one function with few kernels:
- the NF4 weight is dequantized in one kernel: the double-quantized block scales are expanded once and cached
  (the base is frozen), instead of on every pass;
- the base matmul, the adapter and the add share one autograd node, and the input gradient of both is one
  `addmm`; the scale rides in the second matmul;
- only the input, the dropout mask (1 byte per feature, PEFT's kernel) and the rank-r product are kept for the
  backward pass, not PEFT's dropped-out copy of the input (2 bytes per feature).
Same math and dtypes as PEFT over bitsandbytes (autocast's dtype when autocast is on, else the weights'), the same
dropout draw, so checkpoint recomputation replays the mask. The 4-bit storage may be uint8 or, under FSDP, the
compute dtype (the same bytes), and the weight may have lost its quantization state to FSDP's all-gather (the layer
keeps it). A base that is not a bias-free 4-bit layer (a plain Linear) stays its own module, and only the adapter
part is fused.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

DenseWeight = Callable[[], torch.Tensor]


def quant_state_of(layer: nn.Module) -> Any:
    """A bitsandbytes 4-bit layer's quantization state: its weight's, or the layer's own copy where FSDP's all-gather
    gave the layer a plain tensor (bitsandbytes restores it in Linear4bit.forward, which the fused path skips)."""
    return getattr(getattr(layer, "weight", None), "quant_state", None) or getattr(layer, "quant_state", None)


def nf4_dense_weight(layer: nn.Module) -> DenseWeight | None:
    """A function returning a bitsandbytes 4-bit layer's weight dequantized (one kernel), or None if it is not one.

    The fp32 block scales are cached on the layer (4 bytes per 64 weights, about 90 MB for Qwen3-1.7B), except under
    FSDP's storage (not uint8): there each process holds a shard of the weights, and whole scales for every layer
    would cost it 2 GB on Qwen3-32B; they are expanded on every call instead.
    """
    weight = getattr(layer, "weight", None)
    if quant_state_of(layer) is None or getattr(layer, "bias", None) is not None:
        return None
    cache = weight.dtype == torch.uint8
    from bitsandbytes.functional import dequantize_blockwise

    def block_scales(state: Any) -> torch.Tensor:
        absmax = state.absmax
        if state.nested:
            absmax = dequantize_blockwise(state.absmax, state.state2) + state.offset
        return absmax.float()

    def dense() -> torch.Tensor:
        state = quant_state_of(layer)
        if cache:
            cached = getattr(layer, "_medtune_absmax", None)
            if cached is None or cached[0] is not state:
                cached = layer._medtune_absmax = (state, block_scales(state))
            absmax = cached[1]
        else:
            absmax = block_scales(state)
        return torch.ops.bitsandbytes.dequantize_4bit.default(
            layer.weight.data.view(torch.uint8), absmax, state.blocksize, state.quant_type, state.shape, state.dtype
        )

    return dense


class FusedLora(torch.autograd.Function):
    """x @ W^T + scale * (dropout(x) @ A^T) @ B^T, or, when `dense_weight` is None, base_out + the adapter part.

    Keeps x, A and B in the compute dtype, the dropout mask and the rank-r product; W is dequantized again in the
    backward pass, as bitsandbytes does."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight_a: torch.Tensor,
        weight_b: torch.Tensor,
        dense_weight: DenseWeight | None,
        base_out: torch.Tensor | None,
        scale: float,
        p: float,
    ) -> torch.Tensor:
        device = x.device.type
        autocast = torch.is_autocast_enabled(device)
        compute = torch.get_autocast_dtype(device) if autocast else weight_a.dtype
        with torch.autocast(device, enabled=False):
            flat = x.reshape(-1, x.shape[-1])
            if dense_weight is not None:
                weight = dense_weight()
                base_dtype = (
                    compute if autocast else weight.dtype
                )  # bitsandbytes' matmul runs under the caller's autocast
                base_out = flat.to(base_dtype) @ weight.to(base_dtype).t()
                ctx.base_dtype = base_dtype
            out_dtype = x.dtype if dense_weight is not None else base_out.dtype
            inputs, mask = flat.to(compute), None
            if p > 0:
                inputs, mask = torch.native_dropout(inputs, p, True)
            a, b = weight_a.to(compute), weight_b.to(compute)  # kept in this dtype: r x features, small
            low_rank = inputs @ a.t()
            out = torch.addmm(base_out.reshape(-1, base_out.shape[-1]).to(compute), low_rank, b.t(), alpha=scale)
        ctx.save_for_backward(x, a, b, low_rank, mask)
        ctx.dense_weight, ctx.scale, ctx.keep_scale, ctx.compute = dense_weight, scale, 1 / (1 - p), compute
        ctx.a_dtype, ctx.b_dtype = weight_a.dtype, weight_b.dtype
        return out.to(out_dtype).view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, a, b, low_rank, mask = ctx.saved_tensors
        need_x, need_a, need_b, _, need_base = ctx.needs_input_grad[:5]
        grad_x = grad_a = grad_b = None
        with torch.autocast(x.device.type, enabled=False):
            grad = grad_out.reshape(-1, grad_out.shape[-1]).to(ctx.compute)
            if need_b:
                grad_b = (grad.t() @ low_rank).mul_(ctx.scale).to(ctx.b_dtype)
            grad_low_rank = (grad @ b).mul_(ctx.scale)
            if need_a:
                inputs = x.reshape(-1, x.shape[-1]).to(ctx.compute)
                inputs = (
                    inputs if mask is None else torch.ops.aten.native_dropout_backward(inputs, mask, ctx.keep_scale)
                )
                grad_a = (grad_low_rank.t() @ inputs).to(ctx.a_dtype)
            if need_x:
                grad_x = grad_low_rank @ a
                grad_x = (
                    grad_x if mask is None else torch.ops.aten.native_dropout_backward(grad_x, mask, ctx.keep_scale)
                )
                if ctx.dense_weight is not None:  # + the base's input gradient, in the same kernel
                    base_dtype = ctx.base_dtype
                    grad_x = torch.addmm(
                        grad_x.to(base_dtype),
                        grad_out.reshape(-1, grad_out.shape[-1]).to(base_dtype),
                        ctx.dense_weight().to(base_dtype),
                    )
                grad_x = grad_x.to(x.dtype).view(x.shape)
        return grad_x, grad_a, grad_b, None, (grad_out if need_base else None), None, None


def fused_lora_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Forward of a PEFT LoRA layer through `FusedLora`; anything but one plain LoRA adapter goes to PEFT's own."""
    active = self.active_adapters
    if (
        self.disable_adapters
        or self.merged
        or kwargs.get("adapter_names") is not None
        or len(active) != 1
        or active[0] not in self.lora_A
        or active[0] in getattr(self, "lora_variant", {})
    ):
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    dropout = self.lora_dropout[name]
    p = dropout.p if self.training and isinstance(dropout, nn.Dropout) else 0.0
    dense_weight = self._medtune_dense_weight if not args and not kwargs else None
    base_out = None if dense_weight is not None else self.base_layer(x, *args, **kwargs)
    return FusedLora.apply(
        x, self.lora_A[name].weight, self.lora_B[name].weight, dense_weight, base_out, self.scaling[name], p
    )


def install_fused_lora(model: nn.Module) -> tuple[int, int]:
    """Route every PEFT LoRA Linear (plain or bitsandbytes 4-bit) of `model` through `FusedLora`.

    Returns (LoRA projections routed, of which the 4-bit base matmul is fused in too).
    """
    from peft.tuners.lora import Linear as LoraLinear

    linear_types: tuple[type, ...] = (LoraLinear,)
    try:
        from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

        linear_types += (LoraLinear4bit,)
    except ImportError:  # peft without bitsandbytes support
        pass
    routed = with_base = 0
    for module in model.modules():
        if isinstance(module, linear_types):
            module._medtune_dense_weight = nf4_dense_weight(module.base_layer)
            module.forward = types.MethodType(fused_lora_forward, module)
            routed += 1
            with_base += module._medtune_dense_weight is not None
    return routed, with_base
