"""Activation offloading: saved tensors round-trip exactly, and a training step's loss and gradients are bitwise those
without it (on CPU the host copy stands in for the pinned one; the CUDA path is tested where a GPU is present)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import CONFIGS, tiny_config

from medtune.config import ModelConfig, QuantConfig, SpeedConfig, load_config
from medtune.data.batching import micro_batches
from medtune.data.prepare import prepare_data
from medtune.model.load import apply_lora, load_base_model
from medtune.model.offload import ActivationOffload, offloading
from medtune.model.speed import apply_speed
from medtune.train.loss import FusedHeadLoss, causal_lm_loss_sums

CPU = torch.device("cpu")


def round_trip(offload: ActivationOffload, tensor: torch.Tensor) -> torch.Tensor:
    return offload.unpack(offload.pack(tensor))


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
)
def test_pack_unpack_round_trip_is_exact(device):
    offload = ActivationOffload(min_bytes=0)
    generator = torch.Generator().manual_seed(0)
    for tensor in (
        torch.randn(64, 48, generator=generator).to(torch.bfloat16),
        torch.randn(5, 7, 3, generator=generator),
        torch.randn(32, 16, generator=generator).t(),
        torch.randint(0, 2, (40,), generator=generator).bool(),
    ):
        tensor = tensor.to(device)
        packed = offload.pack(tensor)
        assert packed is not tensor and packed.host.device.type == "cpu"
        back = offload.unpack(packed)
        assert back.device == tensor.device and back.dtype == tensor.dtype and back.shape == tensor.shape
        assert back.stride() == tensor.stride(), "strides kept: kernels' backward passes may expect them"
        assert torch.equal(back, tensor)
    assert len(offload.saved) == 4


def test_what_is_not_offloaded_and_what_is_copied_once():
    offload = ActivationOffload(min_bytes=1024)
    small = torch.randn(8)
    parameter = torch.nn.Parameter(torch.randn(64, 64))
    assert offload.pack(small) is small and offload.pack(parameter) is parameter
    big = torch.randn(64, 64)
    assert offload.pack(big) is offload.pack(big), "q, k and v saving one input: one copy"
    big.add_(1)  # a new version of the tensor is a new copy
    assert offload.pack(big) is not offload.saved[0] and len(offload.saved) == 2


def test_a_new_tensor_in_a_freed_tensors_memory_gets_its_own_copy():
    """The bug that trained nothing on CUDA (bench/RESULTS.md, 2026-12-01): each checkpointed layer's input has the
    same shape, and a freed one's memory goes to the next; deduplicating saves by address handed the old copy back.
    Here two tensors share one numpy buffer, written in between: same address, shape, stride and version 0."""
    np = pytest.importorskip("numpy")
    offload = ActivationOffload(min_bytes=1024)
    buffer = np.zeros((64, 64), dtype=np.float32)
    first = torch.from_numpy(buffer)
    packed_first = offload.pack(first)
    buffer[:] = 1.0  # not through torch: no version bump, as a fresh allocation in reused memory has none either
    second = torch.from_numpy(buffer)
    assert second.data_ptr() == first.data_ptr() and second._version == first._version
    packed_second = offload.pack(second)
    assert torch.equal(offload.unpack(packed_first), torch.zeros(64, 64))
    assert torch.equal(offload.unpack(packed_second), torch.ones(64, 64))


@pytest.fixture
def tiny_step():
    """The tiny model with v2's LoRA and trained embeddings (dropout 0: equal draws either way), every layer recomputed.
    Not quantized: CPU 4-bit matmuls are slow, and the hooks see the same activations either way."""

    def build():
        torch.manual_seed(0)
        loaded = load_base_model(ModelConfig(name_or_path="tiny"), QuantConfig(mode="none"), CPU)
        cfg = load_config(CONFIGS / "v2.yaml", ["lora.dropout=0.0"], overlays=[CONFIGS / "tiny.yaml"])
        model = apply_lora(loaded.model, cfg.lora)
        apply_speed(model, SpeedConfig(checkpoint_fraction=1.0), CPU, packing=True, gradient_checkpointing=True)
        model.train()
        return model

    return build


def loss_and_grads(model, batch, offload_min_bytes: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    backbone = model.get_base_model().model
    plain = backbone.forward
    counted = []
    if offload_min_bytes is not None:

        def counting(*args, **kwargs):
            offload = ActivationOffload(offload_min_bytes)
            counted.append(offload)
            with offload:
                return plain(*args, **kwargs)

        backbone.forward = counting
    loss = causal_lm_loss_sums(model, batch, FusedHeadLoss.of(model, 256)).total
    loss.backward()
    backbone.forward = plain
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, sum(len(offload.saved) for offload in counted)


def test_loss_and_gradients_with_offloading_equal_those_without_bitwise(
    tiny_step, tmp_path, short_rows_file, tokenizer
):
    encoded = sorted(prepare_data(tiny_config("v2", tmp_path, short_rows_file), tokenizer).train.encoded, key=len)[:2]
    batch = micro_batches(encoded, 4, 4096, True, tokenizer.pad_token_id)[0]
    assert len(batch["sample_lengths"]) == 2
    loss, grads, _ = loss_and_grads(tiny_step(), batch, None)
    offloaded_loss, offloaded_grads, offloaded = loss_and_grads(tiny_step(), batch, 0)
    assert offloaded > 0, "the checkpointed layers' inputs went through the hooks"
    assert torch.equal(loss, offloaded_loss)
    assert grads.keys() == offloaded_grads.keys() and len(grads) > 0
    assert all(torch.equal(grads[name], offloaded_grads[name]) for name in grads)


def test_evaluation_saves_nothing_and_the_wrapper_is_transparent():
    calls = []

    def forward(x):
        calls.append(torch.is_grad_enabled())
        return x * 2

    wrapped = offloading(forward, min_bytes=0)
    with torch.no_grad():
        assert torch.equal(wrapped(torch.ones(3)), torch.full((3,), 2.0))
    x = torch.ones(4, requires_grad=True)
    (wrapped(x) * x).sum().backward()
    assert torch.equal(x.grad, torch.full((4,), 4.0)) and calls == [False, True]


def test_apply_speed_skips_offloading_on_cpu_with_a_note():
    loaded = load_base_model(ModelConfig(name_or_path="tiny"), QuantConfig(), CPU)
    model = apply_lora(loaded.model, load_config(CONFIGS / "v1.yaml", overlays=[CONFIGS / "tiny.yaml"]).lora)
    plan = apply_speed(model, SpeedConfig(offload_activations=True), CPU, packing=True, gradient_checkpointing=True)
    assert plan.offload_activations is False and any("offload_activations true -> false" in note for note in plan.notes)
