"""The lean step of bitsandbytes' 8-bit AdamW (train/optim8bit.py): bit for bit bitsandbytes' own step, states and
checkpoints included, in both directions."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from medtune.train import optim8bit

PAIRS = [(bnb.optim.AdamW8bit, optim8bit.AdamW8bit), (bnb.optim.PagedAdamW8bit, optim8bit.PagedAdamW8bit)]
HYPER = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-6, "weight_decay": 0.1, "min_8bit_size": 4096}


def make_params() -> list[torch.nn.Parameter]:
    """8-bit states in fp32 and bf16, a small tensor with 32-bit states, and one stepped as a transposed view."""
    generator = torch.Generator().manual_seed(1)
    shapes_dtypes = [
        ((64, 300), torch.float32),
        ((100,), torch.float32),
        ((5000,), torch.bfloat16),
        ((96, 64), torch.float32),
    ]
    return [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape, dtype in shapes_dtypes]


def set_grads(params: list[torch.nn.Parameter], step: int) -> None:
    generator = torch.Generator().manual_seed(10 + step)
    for index, p in enumerate(params):
        grad = torch.randn(p.shape[::-1], generator=generator).to(p.dtype).t() if p.dim() == 2 and index == 3 else None
        grad = grad if grad is not None else torch.randn(p.shape, generator=generator).to(p.dtype)
        p.grad = None if (step == 1 and index == 1) else grad  # one tensor sits out a step


def train(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: range) -> None:
    for step in steps:
        set_grads(params, step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
@pytest.mark.parametrize(("theirs", "ours"), PAIRS, ids=["adamw_8bit", "paged_adamw_8bit"])
def test_the_lean_step_is_bitsandbytes_step_bit_for_bit(theirs, ours):
    reference, lean = make_params(), make_params()
    reference_optimizer, lean_optimizer = theirs(reference, **HYPER), ours(lean, **HYPER)
    train(reference_optimizer, reference, range(3))
    train(lean_optimizer, lean, range(3))
    assert all(torch.equal(a, b) for a, b in zip(reference, lean))
    state = lean_optimizer.state_dict()["state"]
    assert state[0]["step"] == 3 and state[1]["step"] == 2  # the tensor without a gradient was not stepped
    assert_same_state(reference_optimizer.state_dict(), lean_optimizer.state_dict())


@pytest.mark.parametrize("lean_saves", [True, False], ids=["lean-to-bitsandbytes", "bitsandbytes-to-lean"])
def test_checkpoints_move_between_the_lean_step_and_bitsandbytes(lean_saves):
    saving_cls, loading_cls = (
        (optim8bit.AdamW8bit, bnb.optim.AdamW8bit) if lean_saves else (bnb.optim.AdamW8bit, optim8bit.AdamW8bit)
    )
    saved, uninterrupted = make_params(), make_params()
    saving = saving_cls(saved, **HYPER)
    train(saving, saved, range(2))
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in saved]
    loading = loading_cls(resumed, **HYPER)
    loading.load_state_dict(saving.state_dict())
    train(loading, resumed, range(2, 4))
    reference = bnb.optim.AdamW8bit(uninterrupted, **HYPER)
    train(reference, uninterrupted, range(4))
    assert all(torch.equal(a, b) for a, b in zip(resumed, uninterrupted))


def test_a_closure_takes_bitsandbytes_own_step():
    params = make_params()
    optimizer = optim8bit.AdamW8bit(params, **HYPER)
    set_grads(params, 0)
    assert optimizer.step(lambda: torch.tensor(2.5)).item() == 2.5
    assert optimizer.state_dict()["state"][0]["step"] == 1
