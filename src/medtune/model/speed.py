"""Speed levers for training a PEFT-wrapped causal LM (`SpeedConfig`), applied once after LoRA.

None of them changes what is computed:
- packed attention: a packed row holds several samples; attention stays inside each one, through one
  flash-attention varlen call over the row (CUDA), instead of a dense row x row block-diagonal mask that
  computes every cross-sample block only to mask it out; CPUs run one SDPA call per sample (slow on a GPU,
  where the mask is the fallback);
- mixed precision: the forward runs under bf16 autocast, as HF Trainer's `bf16=True` does, so the LoRA
  matmuls run in bf16 on their fp32 weights instead of casting every activation to fp32;
- fused kernels: Liger's RMSNorm, SwiGLU and RoPE kernels, one pass each and fewer saved activations;
- selective checkpointing: only a share of the decoder layers recompute their activations;
- fused LoRA: each LoRA projection, its 4-bit base matmul included, as one autograd function (`model/lora_fused.py`);
- activation offloading: saved activations of the decoder layers in pinned host memory (`model/offload.py`).
Each lever reports what it did in a `SpeedPlan`; `auto` turns a lever on only where it works, so CPU runs
(and CI) take the same code path with the portable variant.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import sys
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PreTrainedModel

from medtune.config import SpeedConfig
from medtune.model.lora_fused import install_fused_lora
from medtune.model.offload import install_activation_offload

log = logging.getLogger(__name__)


@dataclass
class SpeedPlan:
    """What `apply_speed` turned on; `notes` says why a requested lever fell back."""

    packed_attention: str = "none"
    mixed_precision: str = "none"
    fused_kernels: str = "none"
    checkpointed_layers: int = 0
    decoder_layers: int = 0
    fused_lora_modules: int = 0
    fused_base_modules: int = 0  # of which the 4-bit base matmul is in the same function
    offload_activations: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- packed attention ------------------------------------------------------------------------------
def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, Hkv, T, D] -> [B, Hkv * groups, T, D], each key/value head repeated for its group of query heads."""
    return states if groups == 1 else states.repeat_interleave(groups, dim=1)


def per_sample_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: list[int], scaling: float | None
) -> torch.Tensor:
    """Causal SDPA on each sample of a packed row: [1, H, T, D] in, [1, T, H, D] out."""
    groups = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    outputs = [
        F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
        for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2)


@functools.cache
def _varlen_kernel() -> tuple[Callable, set[str]] | None:
    """torch's flash-attention varlen function and its keyword names, which changed across torch releases."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, set(inspect.signature(varlen_attn).parameters)


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_lens: torch.Tensor,
    longest: int,
    scaling: float | None,
) -> torch.Tensor:
    """One flash-attention call over a packed row, causal inside each sample: [1, H, T, D] in, [1, T, H, D] out."""
    kernel, params = _varlen_kernel()
    options: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if scaling is not None and scaling != query.shape[-1] ** -0.5:
        if "scale" not in params:
            raise TypeError("this torch's varlen attention takes no scale")
        options["scale"] = scaling
    groups = query.shape[1] // key.shape[1]
    if "enable_gqa" in params:
        options["enable_gqa"] = groups > 1
    else:
        key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, H, D]
    return kernel(q, k, v, cu_seq_lens, cu_seq_lens, longest, longest, **options).unsqueeze(0)


def varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: varlen flash attention over packed rows (boundaries from `loss.packing_kwargs`).

    A call without boundaries (a row that holds one sample) is plain causal attention over each row.
    """
    if "cu_seq_lens_q" not in kwargs:
        return per_sample_attention(query, key, value, [query.shape[2]], scaling), None
    return varlen_attention(query, key, value, kwargs["cu_seq_lens_q"], kwargs["max_length_q"], scaling), None


def per_sample_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: one causal SDPA call per sample of a packed row (any device)."""
    return per_sample_attention(query, key, value, kwargs.get("sample_lengths") or [query.shape[2]], scaling), None


PACKED_ATTENTION_FUNCTIONS = {"varlen": varlen_attention_forward, "per_sample": per_sample_attention_forward}


def _varlen_works(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when the varlen kernel runs forward and backward here and matches per-sample SDPA; else why not."""
    if device.type != "cuda":
        return "varlen attention needs CUDA"
    if _varlen_kernel() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    generator = torch.Generator(device=device).manual_seed(0)
    lengths = [37, 91, 5]
    q = torch.randn(1, 4, sum(lengths), 128, device=device, dtype=dtype, generator=generator, requires_grad=True)
    k, v = (
        torch.randn(1, 2, sum(lengths), 128, device=device, dtype=dtype, generator=generator, requires_grad=True)
        for _ in range(2)
    )
    cu = torch.tensor([0, 37, 128, 133], device=device, dtype=torch.int32)
    try:
        fast = varlen_attention(q, k, v, cu, max(lengths), None)
        fast.float().square().sum().backward()
        reference = per_sample_attention(q.detach(), k.detach(), v.detach(), lengths, None)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as err:  # no kernel for this GPU, dtype or torch
        return f"varlen attention failed its self-test: {err}"
    error = ((fast.detach() - reference).norm() / reference.norm()).item()
    return None if error < 2e-2 else f"varlen attention differs from per-sample SDPA by {error:.2e}"


def _install_packed_attention(causal_lm: PreTrainedModel, choice: str, device: torch.device, plan: SpeedPlan) -> None:
    """auto: varlen where it works; else the model's masked attention on CUDA (measured 3.7x faster there than one
    SDPA call per sample, bench/RESULTS.md) and per-sample SDPA on CPU (no row x row mask)."""
    kind = choice
    if choice in ("auto", "varlen"):
        reason = _varlen_works(device, torch.bfloat16)
        kind = "varlen" if reason is None else "mask" if choice == "auto" and device.type == "cuda" else "per_sample"
        if reason and choice == "varlen":
            plan.notes.append(f"packed_attention varlen -> per_sample: {reason}")
    plan.packed_attention = kind
    if kind == "mask":
        return
    name = f"medtune_{kind}"
    AttentionInterface.register(name, PACKED_ATTENTION_FUNCTIONS[kind])
    causal_lm.set_attn_implementation(name)


# ---- mixed precision -----------------------------------------------------------------------------
def _under_autocast(forward: Callable, device_type: str, dtype: torch.dtype) -> Callable:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs)

    return run


# ---- fused kernels (Liger) -----------------------------------------------------------------------
def _liger_unavailable(causal_lm: PreTrainedModel, device: torch.device) -> str | None:
    if device.type != "cuda":
        return "Liger kernels need CUDA"
    if importlib.util.find_spec("liger_kernel") is None:
        return "the liger-kernel package is not installed"
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except Exception as err:  # an incompatible triton or torch shows up here, not at the first kernel call
        return f"liger-kernel does not import: {err}"
    if causal_lm.config.model_type != "qwen3":
        return f"fused kernels cover Qwen3, not {causal_lm.config.model_type}"
    return None


def _install_liger(causal_lm: PreTrainedModel) -> None:
    """Rebind the forward of each RMSNorm and MLP; RoPE is a module-level function in transformers, replaced there
    for CUDA tensors (CPU tensors of any other Qwen3 model in the process keep the plain one)."""
    from liger_kernel.transformers.functional import liger_rms_norm, liger_rope, liger_swiglu

    def rms_norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        return liger_rms_norm(hidden_states, self.weight, self.variance_epsilon)  # "llama" casting, as Qwen3RMSNorm

    def mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(liger_swiglu(self.gate_proj(x), self.up_proj(x)))

    modeling = sys.modules[type(causal_lm).__module__]
    plain_rope = getattr(modeling.apply_rotary_pos_emb, "medtune_plain", modeling.apply_rotary_pos_emb)

    @functools.wraps(plain_rope)
    def rope(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if q.is_cuda:
            return liger_rope(q, k, cos, sin, None, unsqueeze_dim)
        return plain_rope(q, k, cos, sin, unsqueeze_dim)

    rope.medtune_plain = plain_rope
    modeling.apply_rotary_pos_emb = rope
    for module in causal_lm.modules():
        if type(module).__name__ == "Qwen3RMSNorm":
            module.forward = types.MethodType(rms_norm_forward, module)
        elif type(module).__name__ == "Qwen3MLP":
            module.forward = types.MethodType(mlp_forward, module)


# ---- the entry point ---------------------------------------------------------------------------
def apply_speed(
    model: nn.Module, cfg: SpeedConfig, device: torch.device, *, packing: bool, gradient_checkpointing: bool
) -> SpeedPlan:
    """Apply the levers of `cfg` to a PEFT-wrapped causal LM in place and say what was applied.

    Call after LoRA: the fused MLP calls the LoRA-wrapped projections. `packing`: batches are packed rows, whose
    attention must stay inside each sample. `gradient_checkpointing`: activation checkpointing is on, for the
    share of decoder layers `cfg.checkpoint_fraction` says; this is the one place that turns it on.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone, plan = causal_lm.model, SpeedPlan()
    if cfg.fused_lora:
        plan.fused_lora_modules, plan.fused_base_modules = install_fused_lora(model)
    if not packing:
        plan.packed_attention = "unused (train.packing is off)"
    else:
        _install_packed_attention(causal_lm, cfg.packed_attention, device, plan)

    base_dtype = causal_lm.get_input_embeddings().weight.dtype
    if cfg.mixed_precision == "bf16" or (
        cfg.mixed_precision == "auto" and device.type == "cuda" and base_dtype == torch.bfloat16
    ):
        backbone.forward = _under_autocast(backbone.forward, device.type, torch.bfloat16)
        plan.mixed_precision = "bf16"

    if cfg.fused_kernels != "none":
        reason = _liger_unavailable(causal_lm, device)
        if reason is None:
            _install_liger(causal_lm)
            plan.fused_kernels = "liger"
        elif cfg.fused_kernels == "liger":
            plan.notes.append(f"fused_kernels liger -> none: {reason}")

    layers = backbone.layers
    plan.decoder_layers = len(layers)
    if gradient_checkpointing:
        # non-reentrant: gradients reach the LoRA weights inside a layer whose input needs none
        enable = getattr(causal_lm, "activation_checkpointing_enable", None)  # the name since transformers 5.2x
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        plan.checkpointed_layers = round(cfg.checkpoint_fraction * len(layers))
        for index, layer in enumerate(layers):
            layer.gradient_checkpointing = index < plan.checkpointed_layers

    if cfg.offload_activations is True:  # auto was resolved by the memory plan (model/memory_plan.py)
        if device.type == "cuda":
            install_activation_offload(backbone)
            plan.offload_activations = True
        else:
            plan.notes.append("offload_activations true -> false: the activations are in host memory already (no GPU)")

    for note in plan.notes:
        log.warning(note)
    return plan
