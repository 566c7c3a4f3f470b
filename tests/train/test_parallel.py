"""One interface for one process, DDP and FSDP: the factory's choice, and what each promises the recipe."""

from __future__ import annotations

import pytest
import torch

from medtune.config import ConfigError, TrainConfig
from medtune.train.distributed import DistContext
from medtune.train.parallel import DataParallel, FullyShardedParallel, SingleProcess, build_parallelism

TWO = DistContext(rank=0, world_size=2)


@pytest.mark.parametrize(
    ("choice", "ctx", "expected"),
    [
        ("ddp", DistContext(), SingleProcess),
        ("fsdp", DistContext(), SingleProcess),  # one process: nothing to share
        ("ddp", TWO, DataParallel),
        ("fsdp", TWO, FullyShardedParallel),
    ],
)
def test_the_factory_picks_by_config_and_process_count(choice, ctx, expected):
    parallel = build_parallelism(TrainConfig(parallelism=choice), ctx)
    assert type(parallel) is expected
    assert parallel.name == {SingleProcess: "none", DataParallel: "ddp", FullyShardedParallel: "fsdp"}[expected]


def test_every_process_needs_a_sample_of_each_step():
    with pytest.raises(ValueError, match="fewer than the 4 processes"):
        build_parallelism(
            TrainConfig(per_device_batch_size=1, gradient_accumulation_steps=2), DistContext(world_size=4)
        )


def test_only_fsdp_shards_weights():
    assert not SingleProcess().shards_weights and not DataParallel().shards_weights
    assert FullyShardedParallel(TWO).shards_weights


@pytest.mark.parametrize("name", ["adamw", "adamw_8bit", "paged_adamw_8bit"])
def test_every_parallelism_builds_every_optimizer(name):
    for parallel in (SingleProcess(), FullyShardedParallel(TWO)):
        weight = torch.nn.Parameter(torch.zeros(64, 128))  # whole: no process group needed
        optimizer = parallel.optimizer([weight], name, lr=0.1)
        assert optimizer.param_groups[0]["params"] == [weight]
        if name != "adamw":  # under FSDP a chunk is 1/2 of its weight: the 8-bit threshold halves with it
            assert optimizer.args.min_8bit_size == {SingleProcess: 4096, FullyShardedParallel: 2048}[type(parallel)]


def test_fsdp_refuses_8bit_states_a_single_process_checkpoint_would_not_hold():
    """A whole tensor of 3,000 values: 32-bit states in one process (under 4,096), 8-bit under the halved threshold."""
    weight = torch.nn.Parameter(torch.zeros(3, 1000))
    FullyShardedParallel(TWO).optimizer([weight], "adamw", lr=0.1)
    with pytest.raises(ConfigError, match="^train.optimizer: .* Use train.optimizer: adamw"):
        FullyShardedParallel(TWO).optimizer([weight], "adamw_8bit", lr=0.1)


def test_a_loaded_optimizer_state_keeps_this_process_kernel_choice():
    """A checkpoint saved with foreach off (as under FSDP) resumes in one process with foreach on."""
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), 0.5)
    saved = torch.optim.AdamW([param], foreach=False)
    saved.step()
    resumed = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], foreach=False)
    SingleProcess().load_optimizer_state(resumed, SingleProcess().optimizer_state(saved))
    assert resumed.param_groups[0]["foreach"] is True
    assert torch.equal(resumed.state_dict()["state"][0]["exp_avg"], saved.state_dict()["state"][0]["exp_avg"])


def test_one_process_leaves_weights_to_peft_and_clips_like_torch():
    single = SingleProcess()
    assert single.trainable_state(torch.nn.Linear(2, 2)) is None
    assert single.forwards([{"a": 1}, {"b": 2}]) == [({"a": 1}, 1.0), ({"b": 2}, 1.0)]
    param = torch.nn.Parameter(torch.zeros(4))
    single.optimizer([param], "adamw", lr=0.1)
    param.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    assert single.clip_grad_norm(1.0).item() == pytest.approx(5.0)
    assert param.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
