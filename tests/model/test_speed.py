"""Each SpeedConfig lever on CPU: the portable path is taken, requests that need CUDA fall back with a note."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import CONFIGS

from medtune.config import ConfigError, ModelConfig, QuantConfig, SpeedConfig, load_config
from medtune.data.batching import micro_batches
from medtune.model.load import apply_lora, load_base_model
from medtune.model.speed import apply_speed, per_sample_attention
from medtune.train.loss import FusedHeadLoss, causal_lm_loss_sums

CPU = torch.device("cpu")
TRAINING = {"packing": True, "gradient_checkpointing": True}  # the training defaults apply_speed is given


@pytest.fixture
def tiny_peft_model():
    loaded = load_base_model(ModelConfig(name_or_path="tiny"), QuantConfig(), CPU)
    cfg = load_config(CONFIGS / "v1.yaml", ["lora.dropout=0.0"], overlays=[CONFIGS / "tiny.yaml"])
    return apply_lora(loaded.model, cfg.lora)


def block_diagonal_reference(query, key, value, lengths):
    """SDPA with an explicit mask: causal, and only inside each sample."""
    sample = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    causal = torch.ones(sum(lengths), sum(lengths), dtype=torch.bool).tril()
    mask = causal & (sample[:, None] == sample[None, :])
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask).transpose(1, 2)


def test_per_sample_attention_keeps_attention_inside_each_sample():
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 11, 1, 7]
    query = torch.randn(1, 4, sum(lengths), 8, generator=generator)
    key, value = (
        torch.randn(1, 2, sum(lengths), 8, generator=generator),
        torch.randn(1, 2, sum(lengths), 8, generator=generator),
    )
    out = per_sample_attention(query, key, value, lengths, None)
    assert out.shape == (1, sum(lengths), 4, 8)
    assert torch.allclose(out, block_diagonal_reference(query, key, value, lengths), atol=1e-6)
    whole_row = per_sample_attention(query, key, value, [sum(lengths)], None)
    assert not torch.allclose(whole_row, out, atol=1e-3), "one causal pass over the row lets samples see each other"


def test_auto_on_cpu_takes_the_portable_path(tiny_peft_model):
    plan = apply_speed(tiny_peft_model, SpeedConfig(), CPU, **TRAINING)
    assert (plan.packed_attention, plan.mixed_precision, plan.fused_kernels) == ("per_sample", "none", "none")
    assert plan.notes == []
    causal_lm = tiny_peft_model.get_base_model()
    assert causal_lm.config._attn_implementation == "medtune_per_sample"
    assert "forward" not in vars(causal_lm.model), "no autocast wrapper on CPU"


def test_levers_that_need_cuda_fall_back_with_a_note(tiny_peft_model):
    cfg = SpeedConfig(packed_attention="varlen", fused_kernels="liger")
    plan = apply_speed(tiny_peft_model, cfg, CPU, **TRAINING)
    assert (plan.packed_attention, plan.fused_kernels) == ("per_sample", "none")
    assert len(plan.notes) == 2 and all("->" in note for note in plan.notes)
    mlp = tiny_peft_model.get_base_model().model.layers[0].mlp
    assert "forward" not in vars(mlp), "the MLP keeps its own forward"


def test_mask_and_padded_rows_leave_the_model_attention_alone(tiny_peft_model):
    plan = apply_speed(tiny_peft_model, SpeedConfig(packed_attention="mask"), CPU, **TRAINING)
    assert plan.packed_attention == "mask"
    assert tiny_peft_model.get_base_model().config._attn_implementation == "sdpa"
    plan = apply_speed(tiny_peft_model, SpeedConfig(), CPU, **{**TRAINING, "packing": False})
    assert plan.packed_attention.startswith("unused")
    assert tiny_peft_model.get_base_model().config._attn_implementation == "sdpa"


@pytest.mark.parametrize(("fraction", "expected"), [(1.0, [True, True]), (0.5, [True, False]), (0.0, [False, False])])
def test_checkpoint_fraction_sets_which_layers_recompute(tiny_peft_model, fraction, expected):
    plan = apply_speed(tiny_peft_model, SpeedConfig(checkpoint_fraction=fraction), CPU, **TRAINING)
    layers = tiny_peft_model.get_base_model().model.layers
    assert [layer.gradient_checkpointing for layer in layers] == expected
    assert (plan.checkpointed_layers, plan.decoder_layers) == (sum(expected), 2)


def test_checkpoint_fraction_is_ignored_without_gradient_checkpointing(tiny_peft_model):
    without = {**TRAINING, "gradient_checkpointing": False}
    plan = apply_speed(tiny_peft_model, SpeedConfig(checkpoint_fraction=0.5), CPU, **without)
    assert plan.checkpointed_layers == 0


def test_bf16_mixed_precision_runs_on_cpu_within_bf16_tolerance(tiny_peft_model, tokenizer):
    from medtune.data.render import Encoded

    ids = tokenizer("患者头痛三天，伴有发热。", add_special_tokens=False)["input_ids"]
    batch = micro_batches([Encoded(ids, ids, [1] * len(ids))], 1, 64, True, tokenizer.pad_token_id)[0]
    fp32 = causal_lm_loss_sums(tiny_peft_model, batch, FusedHeadLoss.of(tiny_peft_model, 16)).total.item()
    plan = apply_speed(tiny_peft_model, SpeedConfig(mixed_precision="bf16"), CPU, **TRAINING)
    assert plan.mixed_precision == "bf16"
    assert causal_lm_loss_sums(
        tiny_peft_model, batch, FusedHeadLoss.of(tiny_peft_model, 16)
    ).total.item() == pytest.approx(fp32, rel=2e-2)


def test_speed_section_is_validated():
    assert load_config(CONFIGS / "v2.yaml").speed == SpeedConfig()
    with pytest.raises(ConfigError, match="speed.checkpoint_fraction"):
        load_config(CONFIGS / "v2.yaml", ["speed.checkpoint_fraction=1.5"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(CONFIGS / "v2.yaml", ["speed.flash=true"])
