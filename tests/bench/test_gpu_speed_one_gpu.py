"""bench/gpu_speed.py's stand-ins for several GPUs on one: `shared` (every process on GPU 0, through gloo) and
`sharesN` (one GPU trains a step's data-parallel shares one after another), and how the report reads them."""

from __future__ import annotations

import argparse
import gc
import types

import pytest
import torch
from tests.bench.conftest import multigpu_record

from medtune.data.batching import process_shares

OPTIONS = argparse.Namespace(size="1.7b", nproc=2, work="w", out="o", warmup=1, steps=1, tiny=False, memory_cap=None)


def test_the_modifiers_reach_the_stage_and_are_not_variants(gpu_speed):
    shared = gpu_speed.stage_command("multigpu", ["8b", "v2", "fsdp", "cap24", "shared"], OPTIONS)
    assert "--shared-gpu" in shared and "torch.distributed.run" in shared
    assert shared[shared.index("multigpu") + 1 :][:2] == ["v2", "--work"]
    shares = gpu_speed.stage_command("multigpu", ["8b", "v2", "none", "row_ckpt100", "shares2"], OPTIONS)
    assert shares[shares.index("--simulate-processes") + 1] == "2" and "torch.distributed.run" not in shares
    assert shares[shares.index("multigpu") + 1 : shares.index("multigpu") + 3] == ["v2", "row_ckpt100"]


@pytest.mark.parametrize("stage", [["8b", "v2", "none", "shared"], ["8b", "v2", "ddp", "shares2"]])
def test_shared_needs_several_processes_and_shares_need_one(gpu_speed, stage):
    with pytest.raises(SystemExit, match="`shared` needs ddp or fsdp, `sharesN` needs none"):
        gpu_speed.stage_command("multigpu", stage, OPTIONS)


def test_each_share_is_the_split_data_parallel_processes_train(gpu_speed):
    items = [[0] * n for n in (900, 40, 700, 300, 650, 120, 80)]
    trained: list[list[int]] = []
    processes: list[int] = []
    pauses = gpu_speed.HostPauses()
    seconds, paused = gpu_speed.shares_one_after_another(
        lambda share: trained.append([len(i) for i in share]), items, 3, pauses, processes.append
    )
    pauses.close()
    assert len(seconds) == 3 and all(s >= 0 for s in seconds) and len(paused) == 3
    assert trained == [[len(items[i]) for i in share] for share in process_shares([len(i) for i in items], 3)]
    assert processes == [0, 1, 2]


def test_host_pauses_count_garbage_collection_and_triton_compilations(gpu_speed, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    pauses = gpu_speed.HostPauses()
    try:
        nothing = {"gc_s": [0.0] * 3, "triton_compiled": 0, "cuda_segments_allocated": 0, "cuda_segments_freed": 0}
        assert pauses.take() == nothing
        cycles = [[] for _ in range(200_000)]
        for cycle in cycles:
            cycle.append(cycle)
        del cycles
        gc.collect()
        (tmp_path / "a-compiled-kernel").mkdir()
        taken = pauses.take()
        assert taken["gc_s"][2] > 0 and taken["triton_compiled"] == 1
        assert pauses.take() == nothing  # each pause is counted once
    finally:
        pauses.close()


def test_a_zero1_share_steps_only_the_tensors_its_process_would_own(gpu_speed):
    params = [torch.nn.Parameter(torch.ones(n)) for n in (8, 5, 3, 2)]  # owners_by_size: 0, 1, 1, 0
    recipe = types.SimpleNamespace(trainable_params=params, optimizer=torch.optim.SGD(params, lr=1.0))
    set_share = gpu_speed.owned_tensors_only(recipe, 2)
    for process, owned in ((0, [0, 3]), (1, [1, 2])):
        set_share(process)
        for param in params:
            param.grad = torch.ones_like(param)
        recipe.optimizer.step()
        stepped = [i for i, param in enumerate(params) if param.detach().eq(0).all()]
        assert stepped == owned
        with torch.no_grad():
            for param in params:
                param.fill_(1.0)


def test_simulated_shares_give_the_speed_up_without_communication_and_are_no_baseline(gpu_speed):
    records = [
        multigpu_record("none", 8900.0),
        multigpu_record("none", 9000.0, simulated_processes=2, simulated_tokens_per_s=16910.0, losses=[]),
    ]
    rows = [line for line in gpu_speed.multigpu_report(records) if line.startswith("| 8b")]
    assert "| 1.00x |" in rows[0]  # the simulated run (9,000 tokens/s) is not taken as the one-GPU baseline
    assert "2 shares one after another" in rows[1] and "| 16,910 | 1.90x | 95% |" in rows[1]


def test_a_shared_gpu_run_shows_peaks_against_one_gpu_but_no_speed_up(gpu_speed):
    rows = [
        line
        for line in gpu_speed.multigpu_report(
            [multigpu_record("none", 8900.0), multigpu_record("fsdp", 3000.0, shared_gpu=True)]
        )
        if line.startswith("| 8b")
    ]
    assert "all on one GPU" in rows[1] and "3,000 (not a speed) | - | - |" in rows[1]
    assert "| 19.5, 19.6 | 52% |" in rows[1]


def test_a_sharded_optimizer_run_is_measured_against_the_plain_one_gpu_run(gpu_speed):
    """`zero1` changes nothing in one process: its speed-up is against the plain one-GPU run in the same call."""
    zero1 = multigpu_record("ddp", 16020.0, variant="zero1", overrides=gpu_speed.VARIANTS["zero1"])
    rows = [
        line for line in gpu_speed.multigpu_report([multigpu_record("none", 8900.0), zero1]) if line.startswith("| 8b")
    ]
    assert "| zero1 | ddp |" in rows[1] and "| 1.80x | 90% |" in rows[1]


def test_settings_run_more_than_once_show_their_spread_without_runs_that_compiled(gpu_speed):
    steady, compiling = [{"triton_compiled": 0}] * 2, [{"triton_compiled": 2}, {"triton_compiled": 0}]
    shares = [[{"triton_compiled": 0}, {"triton_compiled": 1}], [{"triton_compiled": 0}] * 2]
    records = [
        multigpu_record("none", 7000.0, host_pauses=compiling),  # the first stage on a fresh machine
        multigpu_record("none", 9000.0, host_pauses=steady),
        multigpu_record("none", 8000.0, host_pauses=steady),
        multigpu_record("none", 8600.0, host_pauses=steady),
        multigpu_record("none", 9000.0, simulated_processes=2, simulated_tokens_per_s=15000.0, share_pauses=shares),
        multigpu_record("none", 9000.0, simulated_processes=2, simulated_tokens_per_s=16000.0, host_pauses=steady),
        multigpu_record("ddp", 15000.0),
    ]
    lines = gpu_speed.repeated_runs_report(records)
    rows = [line for line in lines if line.startswith("| 8b")]
    assert rows == ["| 8b | v2 | auto | none | 1 | 3 | 8,600 | 8,000 | 9,000 | +12.5% |"]
    assert any(line in gpu_speed.multigpu_report(records) for line in rows)
    assert gpu_speed.repeated_runs_report(records[4:]) == []  # one clean run of each setting: no spread to show


def test_compiled_runs_are_a_setting_of_their_own_measured_against_a_compiled_one_gpu_run(gpu_speed):
    command = gpu_speed.stage_command("multigpu", ["8b", "v2", "none", "compiled", "shares2"], OPTIONS)
    assert "--compile-layers" in command and command[command.index("multigpu") + 1 :][:2] == ["v2", "--work"]
    records = [
        multigpu_record("none", 9000.0),
        multigpu_record("none", 10000.0, compiled_layers=True),
        multigpu_record("none", 9000.0, simulated_processes=2, simulated_tokens_per_s=18000.0, compiled_layers=True),
        multigpu_record("none", 8000.0),
    ]
    rows = [line for line in gpu_speed.multigpu_report(records) if line.startswith("| 8b")]
    assert "| auto, compiled | none |" in rows[1] and "| 10,000 | 1.00x |" in rows[1]  # its own baseline
    assert "| auto, compiled | none, 2 shares one after another |" in rows[2] and "| 1.80x | 90% |" in rows[2]
    assert "| auto | none |" in rows[3] and "| 8,000 | 0.89x |" in rows[3]  # against the plain 9,000
    spread = [line for line in gpu_speed.repeated_runs_report(records) if line.startswith("| 8b")]
    assert spread == ["| 8b | v2 | auto | none | 1 | 2 | 8,500 | 8,000 | 9,000 | +12.5% |"]
