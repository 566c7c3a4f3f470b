"""The training state of a checkpoint: stored as safetensors + JSON, read back equal, and never executed on load."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from medtune.run_folder import LEGACY_STATE_FILE, STATE_JSON_FILE, STATE_TENSORS_FILE, RunFolder
from medtune.train.checkpoint import (
    CheckpointError,
    load_training_state,
    rng_state,
    save_checkpoint,
    save_training_state,
)


def assert_same(a, b, where="state"):
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}.{i}")
    else:
        assert a == b, where


def optimizer_state() -> dict:
    """A real AdamW state after one step (int-keyed moments, 0-dim step tensors, tuple betas)."""
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    return optimizer.state_dict()


def test_a_state_is_read_back_equal_and_stored_without_pickle(tmp_path):
    shared = torch.arange(6, dtype=torch.float32)  # one tensor met twice (bitsandbytes shares its quantization map)
    random.random()
    state = {
        "step": 7,
        "elapsed": 1.5,
        "optimizer": optimizer_state(),
        "rng": rng_state(),
        "window": {"loss": 0.0, "grad_norms": [0.5, float("nan")], "note": None},
        "shared": [shared, shared, shared[2:4]],
        "augment_stats": None,
    }
    save_training_state(tmp_path, state)
    loaded = load_training_state(tmp_path)
    assert_same(state["optimizer"], loaded["optimizer"])
    assert_same(state["rng"], loaded["rng"])
    assert loaded["window"]["grad_norms"][1] != loaded["window"]["grad_norms"][1]  # NaN survives
    assert loaded["shared"][0] is loaded["shared"][1] and torch.equal(loaded["shared"][2], shared[2:4])
    assert {p.name for p in tmp_path.iterdir()} == {STATE_TENSORS_FILE, STATE_JSON_FILE}
    assert json.loads((tmp_path / STATE_JSON_FILE).read_text())["state"]["step"] == 7

    restored = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(5))], lr=1e-3)
    restored.load_state_dict(loaded["optimizer"])
    assert_same(restored.state_dict(), state["optimizer"])


def test_what_json_cannot_hold_is_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match=r"state\.scheduler\.fn: a builtin_function_or_method cannot be stored"):
        save_training_state(tmp_path, {"scheduler": {"fn": print}})


def test_an_old_pickled_state_is_still_read_when_it_holds_only_tensors_and_plain_values(tmp_path):
    state = {"step": 3, "optimizer": optimizer_state(), "rng": rng_state()}
    torch.save(state, tmp_path / LEGACY_STATE_FILE)
    assert_same(load_training_state(tmp_path), state)


def test_a_pickle_that_would_run_a_command_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"step": 3, "optimizer": Exploit()}, tmp_path / LEGACY_STATE_FILE)
    with pytest.raises(
        CheckpointError, match=r"training_state\.pt: cannot read the training state \(it asks to call \S*system"
    ):
        load_training_state(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        (LEGACY_STATE_FILE, b"", "the file is empty or cut short"),
        (LEGACY_STATE_FILE, b"\x80\x02not a checkpoint", "not a checkpoint torch can read"),
        (STATE_TENSORS_FILE, b"garbage", "Error while deserializing header"),
        (STATE_JSON_FILE, b'{"format": "something else"}', "not a medtune training state"),
        (STATE_JSON_FILE, b'{"format": "medtune training state", "version": 99, "state": {}}', "format version 99"),
        (
            STATE_JSON_FILE,
            b'{"format": "medtune training state", "version": 1, "state": {"$tensor": "missing"}}',
            "does not match",
        ),
    ],
)
def test_a_damaged_state_is_one_line_naming_the_file_and_what_to_do(tmp_path, name, content, reason):
    if name != LEGACY_STATE_FILE:
        save_training_state(tmp_path, {"step": 1, "moment": torch.ones(2)})
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError) as failed:
        load_training_state(tmp_path)
    message = str(failed.value)
    assert message.startswith(f"{tmp_path / name}: cannot read the training state (") and reason in message
    assert message.endswith("no earlier checkpoint holds one (only the newest keeps it): start again with --overwrite")
    assert "\n" not in message


def test_a_damaged_state_says_whether_an_earlier_checkpoint_can_be_resumed(tmp_path):
    """Deleting the damaged checkpoint helps only if an earlier one holds a training state, which save_checkpoint
    drops from all but the newest: the advice to delete it and resume from an earlier one was wrong."""

    def write(folder):
        save_training_state(folder, {"moment": torch.ones(3)})

    for step in (2, 4):
        save_checkpoint(tmp_path, step, write, keep_last=2)
    newest = RunFolder(tmp_path).checkpoint(4)
    (newest / STATE_JSON_FILE).write_text("garbage")
    with pytest.raises(CheckpointError) as failed:
        load_training_state(newest)
    assert "start again with --overwrite" in str(failed.value) and "by deleting" not in str(failed.value)

    legacy = RunFolder(tmp_path).checkpoint(2)  # an earlier medtune version's run, which kept older states
    save_training_state(legacy, {"moment": torch.ones(3)})
    with pytest.raises(CheckpointError) as failed:
        load_training_state(newest)
    assert str(failed.value).endswith(f"delete {newest} to resume from step 2, or start again with --overwrite")


def test_only_the_newest_checkpoint_keeps_its_training_state(tmp_path):
    def write(folder):
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
        save_training_state(folder, {"moment": torch.ones(3)})

    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, write, keep_last=2)
    run = RunFolder(tmp_path)
    assert [step for step, _ in run.list_checkpoints()] == [4, 6]
    step, folder = run.resumable_checkpoint()
    assert step == 6 and (folder / STATE_TENSORS_FILE).exists()
    older = run.list_checkpoints()[0][1]
    assert sorted(p.name for p in older.iterdir()) == ["adapter_model.safetensors"]
    assert not any(tmp_path.rglob("*.tmp"))  # the staging folders were renamed into place


def test_a_bitsandbytes_8bit_optimizer_resumes_exactly(tmp_path):
    """CUDA's default optimizer: its state nests a quantization dict (8-bit moments, maps, absmax) under each
    parameter."""
    import bitsandbytes as bnb

    def loss(params):
        return sum((p**2).sum() for p in params)

    params = [
        torch.nn.Parameter(torch.randn(4096, 8)),
        torch.nn.Parameter(torch.randn(8)),
    ]  # 4,096+ elements: 8-bit moments
    optimizer = bnb.optim.AdamW8bit(params, lr=1e-2)
    loss(params).backward()
    optimizer.step()
    save_training_state(tmp_path, {"optimizer": optimizer.state_dict()})
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = bnb.optim.AdamW8bit(copies, lr=1e-2)
    resumed.load_state_dict(load_training_state(tmp_path)["optimizer"])
    assert_same(resumed.state_dict(), optimizer.state_dict())
    for opt, group in ((optimizer, params), (resumed, copies)):
        opt.zero_grad()
        loss(group).backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, copies))
