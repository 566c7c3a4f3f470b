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
    with pytest.raises(ConfigError, match="fewer than the 4 processes"):
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


def test_owners_balance_the_values_each_process_steps():
    from medtune.train.parallel import owners_by_size

    # Qwen3-8B v2 in miniature: two large trained embeddings and many small LoRA matrices
    sizes = [1000, 1000] + [10] * 40
    owners = owners_by_size(sizes, 2)
    assert owners[0] != owners[1]
    totals = [sum(size for size, owner in zip(sizes, owners) if owner == rank) for rank in (0, 1)]
    assert totals == [1200, 1200]
    assert owners_by_size([5, 3], 2) == [0, 1]


def test_a_sharded_optimizer_needs_a_tensor_for_every_process():
    with pytest.raises(ConfigError, match="^train.shard_optimizer: 1 trained tensors cannot be shared by 2"):
        DataParallel(TWO, shard_optimizer=True).optimizer([torch.nn.Parameter(torch.zeros(4))], "adamw", lr=0.1)


def _sharded_step_round_trip(rank: int, init_file: str) -> None:
    """Two processes, each stepping only the tensors it owns and broadcasting them, against one process stepping
    all: the same weights, a gathered state equal to one process's, and a resume from it that steps on alike."""
    import copy

    import torch.distributed as dist
    from tests.conftest import leave_process_group

    from medtune.train.fsdp import MIN_8BIT_SIZE
    from medtune.train.parallel import build_optimizer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ctx = DistContext(rank=rank, world_size=2)
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(64, 128, generator=generator), torch.randn(48, 128, generator=generator)]
    weights += [torch.randn(8, 4, generator=generator) for _ in range(5)]
    steps = [[torch.randn(w.shape, generator=generator) for w in weights] for _ in range(3)]

    def step(optimizer, params, grads, parallel=None) -> None:
        for param, grad in zip(params, grads):
            param.grad = grad.clone()  # what DDP's all-reduce leaves on every process
        optimizer.step()
        if parallel is not None:
            parallel.finish_step()
        optimizer.zero_grad(set_to_none=True)

    for name in ("adamw", "adamw_8bit"):
        one = [torch.nn.Parameter(w.clone()) for w in weights]
        reference = build_optimizer(one, name, MIN_8BIT_SIZE, lr=0.1, weight_decay=0.01)
        parallel = DataParallel(ctx, shard_optimizer=True)
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizer = parallel.optimizer(params, name, lr=0.1, weight_decay=0.01)
        assert len(optimizer.param_groups[0]["params"]) < len(params)  # this process steps only its own
        for grads in steps[:2]:
            step(reference, one, grads)
            step(optimizer, params, grads, parallel)
        assert all(torch.equal(mine, whole) for mine, whole in zip(params, one)), name
        assert all(p.grad is None for p in params)

        gathered, expected = parallel.optimizer_state(optimizer), copy.deepcopy(reference.state_dict())
        if rank == 0:
            assert gathered["param_groups"] == expected["param_groups"]
            assert gathered["state"].keys() == expected["state"].keys()
            for index, entry in expected["state"].items():
                mine = gathered["state"][index]
                for key, value in entry.items():
                    same = torch.equal if isinstance(value, torch.Tensor) else (lambda a, b: a == b)
                    if isinstance(value, dict):  # bitsandbytes' nested 8-bit states and block scales
                        assert all(torch.equal(mine[key][k], v) for k, v in value.items()), (name, index, key)
                    else:
                        assert same(mine[key], value), (name, index, key)
        else:
            assert gathered == {}

        resumed = DataParallel(ctx, shard_optimizer=True)
        resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in one]
        fresh = resumed.optimizer(resumed_params, name, lr=0.1, weight_decay=0.01)
        resumed.load_optimizer_state(fresh, expected)
        step(reference, one, steps[2])
        step(fresh, resumed_params, steps[2], resumed)
        assert all(torch.equal(mine, whole) for mine, whole in zip(resumed_params, one)), name
    leave_process_group()


def test_ddp_with_a_sharded_optimizer_steps_saves_and_resumes_like_one_process(tmp_path):
    torch.multiprocessing.spawn(_sharded_step_round_trip, args=(str(tmp_path / "rendezvous"),), nprocs=2)
