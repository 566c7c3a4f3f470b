"""The fused LoRA function computes what PEFT's LoRA forward computes, with the same dropout mask in both passes."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import CONFIGS

from medtune.config import ModelConfig, QuantConfig, SpeedConfig, load_config
from medtune.data.batching import micro_batches
from medtune.data.render import Encoded
from medtune.model.load import apply_lora, load_base_model
from medtune.model.lora_fused import install_fused_lora
from medtune.model.speed import apply_speed
from medtune.train.loss import FusedHeadLoss, causal_lm_loss_sums

CPU = torch.device("cpu")
TRAINING = {"packing": True, "gradient_checkpointing": True}  # the training defaults apply_speed is given


def tiny_nf4_lora(dropout: float):
    loaded = load_base_model(ModelConfig(name_or_path="tiny"), QuantConfig(), CPU)
    cfg = load_config(CONFIGS / "v1.yaml", [f"lora.dropout={dropout}"], overlays=[CONFIGS / "tiny.yaml"])
    model = apply_lora(loaded.model, cfg.lora)
    # As under activation checkpointing in training: the layers' inputs need gradients, so bitsandbytes' CPU matmul
    # is the dequantize-then-matmul one the fused function reproduces, not its lower-precision inference kernel.
    model.get_base_model().enable_input_require_grads()
    torch.manual_seed(3)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would hide A's gradient and the adapter's output
            param.data.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def batch(tokenizer):
    ids = tokenizer("患者头痛三天，伴有发热和恶心。<think>考虑感冒</think>建议多休息。", add_special_tokens=False)[
        "input_ids"
    ]
    return micro_batches([Encoded(ids, ids, [1] * len(ids))], 1, 64, True, tokenizer.pad_token_id)[0]


def loss_and_grads(model, batch, seed: int = 0) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(seed)
    loss = causal_lm_loss_sums(model, batch, FusedHeadLoss.of(model, 16)).total
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fused_lora_matches_peft_without_dropout(batch):
    model = tiny_nf4_lora(0.0)
    peft_loss, peft_grads = loss_and_grads(model, batch)
    assert install_fused_lora(model) == (14, 14)  # 7 projections x 2 layers, each with its NF4 base
    fused_loss, fused_grads = loss_and_grads(model, batch)
    assert fused_loss == pytest.approx(peft_loss, rel=1e-6)
    for name, grad in peft_grads.items():
        assert torch.allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-7), name


def test_backward_uses_the_forward_dropout_mask():
    layer = tiny_nf4_lora(0.3).get_base_model().model.layers[0].self_attn.q_proj
    install_fused_lora(layer)
    x = torch.randn(2, 5, layer.in_features, requires_grad=True)
    weights = torch.randn(2, 5, layer.out_features)
    torch.manual_seed(11)
    (layer(x) * weights).sum().backward()
    fused = [t.grad.clone() for t in (x, layer.lora_A["default"].weight, layer.lora_B["default"].weight)]

    for t in (x, layer.lora_A["default"].weight, layer.lora_B["default"].weight):
        t.grad = None
    torch.manual_seed(11)  # the fused forward's first random draw is its dropout: the same draw again
    mask = torch.native_dropout(torch.ones(10, layer.in_features), 0.3, True)[1].view(x.shape) / 0.7
    assert 0.5 < (mask == 0).float().mean().item() / 0.3 < 1.5, "about 30% of inputs dropped"
    lora = layer.lora_B["default"](layer.lora_A["default"](x * mask)) * layer.scaling["default"]
    ((layer.base_layer(x) + lora) * weights).sum().backward()
    reference = [t.grad for t in (x, layer.lora_A["default"].weight, layer.lora_B["default"].weight)]
    for got, expected in zip(fused, reference):
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_checkpoint_recompute_replays_the_dropout_mask(batch):
    model = tiny_nf4_lora(0.3)
    apply_speed(model, SpeedConfig(checkpoint_fraction=0.0), CPU, **TRAINING)
    kept_loss, kept = loss_and_grads(model, batch, seed=5)
    apply_speed(model, SpeedConfig(checkpoint_fraction=1.0), CPU, **TRAINING)
    recomputed_loss, recomputed = loss_and_grads(model, batch, seed=5)
    assert recomputed_loss == kept_loss
    for name, grad in kept.items():
        assert torch.allclose(recomputed[name], grad, rtol=1e-5, atol=1e-8), name
    other_loss, _ = loss_and_grads(model, batch, seed=6)
    assert other_loss != kept_loss, "another seed draws another mask"


def test_cached_block_scales_dequantize_as_bitsandbytes():
    import bitsandbytes.functional as bnbf

    from medtune.model.lora_fused import nf4_dense_weight

    base = tiny_nf4_lora(0.0).get_base_model().model.layers[1].mlp.down_proj.base_layer
    assert base.weight.quant_state.nested, "the reference's double quant: block scales are themselves 8-bit"
    dense = nf4_dense_weight(base)
    assert torch.equal(dense(), bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state))
    assert dense() is not dense() and base._medtune_absmax[1].dtype == torch.float32


def test_unquantized_base_keeps_its_own_matmul(batch):
    loaded = load_base_model(ModelConfig(name_or_path="tiny"), QuantConfig(mode="none"), CPU)
    cfg = load_config(CONFIGS / "v1.yaml", ["lora.dropout=0.0"], overlays=[CONFIGS / "tiny.yaml"])
    model = apply_lora(loaded.model, cfg.lora)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    peft_loss, peft_grads = loss_and_grads(model, batch)
    assert install_fused_lora(model) == (14, 0)
    fused_loss, fused_grads = loss_and_grads(model, batch)
    assert fused_loss == pytest.approx(peft_loss, rel=1e-6)
    for name, grad in peft_grads.items():
        assert torch.allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-7), name


def test_fsdp_storage_fuses_the_base_too(batch):
    """Under FSDP the 4-bit bytes are stored in the compute dtype, and an all-gathered weight is a plain tensor that
    lost its quantization state: the fused function still dequantizes it, with the layer's state."""
    loaded = load_base_model(ModelConfig(name_or_path="tiny"), QuantConfig(), CPU, fsdp=True)
    cfg = load_config(CONFIGS / "v1.yaml", ["lora.dropout=0.0"], overlays=[CONFIGS / "tiny.yaml"])
    model = apply_lora(loaded.model, cfg.lora)
    model.get_base_model().enable_input_require_grads()
    torch.manual_seed(3)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    peft_loss, peft_grads = loss_and_grads(model, batch)
    assert install_fused_lora(model) == (14, 14)
    for module in model.modules():  # as after FSDP's all-gather: the bytes alone, the state on the layer
        if type(module).__name__ == "Linear4bit" and not hasattr(module, "lora_A"):
            assert module.weight.dtype != torch.uint8
            module.weight = torch.nn.Parameter(module.weight.data, requires_grad=False)
    fused_loss, fused_grads = loss_and_grads(model, batch)
    assert fused_loss == pytest.approx(peft_loss, rel=1e-6)
    for name, grad in peft_grads.items():
        assert torch.allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-7), name
    assert not any(hasattr(m, "_medtune_absmax") for m in model.modules()), "no whole block scales kept per process"
