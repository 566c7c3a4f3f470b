"""The fused lm_head + cross-entropy against plain PyTorch, and the packed loss against one sample at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_config

from medtune.data.batching import micro_batches
from medtune.train.loss import FusedHeadLoss, causal_lm_loss_sums, head_weight, linear_cross_entropy


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference.double()).norm() / reference.double().norm()).item()


def plain_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")


@pytest.mark.parametrize("chunk_tokens", [1, 7, 64, 1000])
@pytest.mark.parametrize("weight_trained", [False, True])
def test_fused_head_loss_equals_plain_cross_entropy_in_value_and_gradient(chunk_tokens, weight_trained):
    generator = torch.Generator().manual_seed(chunk_tokens)
    hidden = torch.randn(53, 24, generator=generator, dtype=torch.float64)
    weight = torch.randn(97, 24, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 97, (53,), generator=generator)
    fused_h, fused_w = hidden.clone().requires_grad_(), weight.clone().requires_grad_(weight_trained)
    plain_h, plain_w = hidden.clone().requires_grad_(), weight.clone().requires_grad_(weight_trained)

    total, token_losses = linear_cross_entropy(fused_h, fused_w, targets, chunk_tokens)
    (total / 3).backward()
    reference = plain_loss(plain_h, plain_w, targets)
    (reference / 3).backward()

    assert torch.allclose(total.double(), reference.double(), rtol=1e-6)
    assert torch.allclose(token_losses.sum(), total)
    assert not token_losses.requires_grad
    assert relative_error(fused_h.grad, plain_h.grad) < 1e-5  # both round the logits to fp32
    if weight_trained:
        assert relative_error(fused_w.grad, plain_w.grad) < 1e-5
    else:
        assert fused_w.grad is None


def test_fused_head_loss_gradient_scales_with_the_incoming_gradient_in_low_precision():
    """bf16 inputs: the 1/tokens scale is applied in fp32, so the gradient matches the plain bf16 graph."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 32, generator=generator).bfloat16()
    weight = (torch.randn(300, 32, generator=generator) * 0.1).bfloat16()
    targets = torch.randint(0, 300, (40,), generator=generator)
    fused_h, plain_h = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    (linear_cross_entropy(fused_h, weight, targets, 16)[0] / 777).backward()
    (plain_loss(plain_h, weight, targets) / 777).backward()
    assert fused_h.grad.dtype == torch.bfloat16
    assert relative_error(fused_h.grad, plain_h.grad) < 1e-2


def test_without_gradients_nothing_is_kept_for_backward():
    hidden, weight = torch.randn(10, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    targets = torch.randint(0, 30, (10,))
    with torch.no_grad():
        total, token_losses = linear_cross_entropy(hidden, weight, targets, 4)
    assert total.grad_fn is None
    assert torch.allclose(total, plain_loss(hidden, weight, targets).detach(), rtol=1e-6)
    assert token_losses.shape == (10,)


def test_a_head_with_bias_is_refused():
    with pytest.raises(ValueError, match="without bias"):
        head_weight(torch.nn.Linear(4, 6, bias=True))


@pytest.mark.parametrize("packed_attention", ["per_sample", "mask"])
def test_packed_rows_give_the_loss_and_gradients_of_one_sample_at_a_time(tmp_path, short_rows_file, packed_attention):
    from medtune.train.recipe import FineTuneRecipe

    cfg = tiny_config(
        "v1",
        tmp_path,
        short_rows_file,
        "lora.dropout=0.0",
        f"speed.packed_attention={packed_attention}",
        "train.per_device_batch_size=2",
        "train.gradient_accumulation_steps=2",
    )
    recipe = FineTuneRecipe(cfg)
    recipe.setup()
    items = recipe._next_step_samples()[:3]
    torch.manual_seed(0)
    for name, param in recipe.model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)  # B starts at zero; non-zero B makes the LoRA path matter

    def loss_and_grads(batches):
        recipe.model.zero_grad(set_to_none=True)
        total = sum(
            causal_lm_loss_sums(recipe.model, batch, FusedHeadLoss.of(recipe.model, 64)).total for batch in batches
        )
        total.backward()
        return total.detach(), {n: p.grad.clone() for n, p in recipe.model.named_parameters() if p.grad is not None}

    packed = micro_batches(items, 4, 4 * 640, True, recipe.tokenizer.pad_token_id)
    assert len(packed) == 1 and len(packed[0]["sample_lengths"]) == 3
    one_at_a_time = [micro_batches([item], 1, 640, False, recipe.tokenizer.pad_token_id)[0] for item in items]
    packed_loss, packed_grads = loss_and_grads(packed)
    single_loss, single_grads = loss_and_grads(one_at_a_time)
    assert torch.allclose(packed_loss, single_loss, rtol=1e-5)
    assert packed_grads.keys() == single_grads.keys()
    for name in packed_grads:  # fp32 sums in another order: elements near zero differ by ~1e-6 of the tensor's scale
        scale = single_grads[name].abs().max()
        assert torch.allclose(packed_grads[name], single_grads[name], rtol=1e-3, atol=1e-5 * scale), name

    # the check can fail: without the boundaries, each sample would attend to the ones before it in the row
    leaky = dict(packed[0])
    for key in ("sample_lengths", "cu_seq_lens", "position_ids"):
        leaky.pop(key)
    leaky_loss = causal_lm_loss_sums(recipe.model, leaky, FusedHeadLoss.of(recipe.model, 64)).total.detach()
    assert not torch.allclose(leaky_loss, single_loss, rtol=1e-5)
    recipe.cleanup()


def test_speed_defaults_match_speed_off_on_cpu(tmp_path, short_rows_file):
    """`auto` on CPU takes the portable path; its step equals the step with every lever off."""
    from medtune.train.recipe import FineTuneRecipe

    results = []
    for overrides in ((), ("speed.packed_attention=mask", "speed.mixed_precision=none", "speed.fused_kernels=none")):
        recipe = FineTuneRecipe(
            tiny_config("v2", tmp_path / str(len(overrides)), short_rows_file, "lora.dropout=0.0", *overrides)
        )
        recipe.setup()
        grad_norm = recipe.train_step(recipe._next_step_samples())
        results.append((recipe.window.loss / recipe.window.tokens, grad_norm, recipe.speed_plan))
        recipe.cleanup()
    (auto_loss, auto_norm, auto_plan), (off_loss, off_norm, _) = results
    assert (
        auto_plan.packed_attention == "per_sample"
        and auto_plan.mixed_precision == "none"
        and auto_plan.fused_kernels == "none"
    )
    assert abs(auto_loss - off_loss) < 1e-5 * off_loss
    assert abs(auto_norm - off_norm) < 1e-4 * off_norm
