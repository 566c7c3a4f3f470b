"""Finding the adapter that RUN names, with clear errors, and loading it exactly as trained."""

from __future__ import annotations

import re

import bitsandbytes as bnb
import pytest
import torch

from medtune.infer.runs import RunNotFoundError, describe, load_for_inference, resolve_run
from medtune.run_folder import STATE_JSON_FILE


def test_missing_run_folder(tmp_path):
    with pytest.raises(RunNotFoundError, match="no such run folder"):
        resolve_run(tmp_path / "nope")


def test_unfinished_run_lists_its_checkpoints(tmp_path):
    for step in (3, 6):
        folder = tmp_path / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        (folder / STATE_JSON_FILE).write_bytes(b"")
    with pytest.raises(RunNotFoundError, match=r"no final adapter.*saved checkpoints: 3, 6"):
        resolve_run(tmp_path)
    with pytest.raises(RunNotFoundError, match=r"no checkpoint at step 5; saved steps: 3, 6"):
        resolve_run(tmp_path, checkpoint=5)
    with pytest.raises(RunNotFoundError, match="no medtune_adapter.json"):
        resolve_run(tmp_path, checkpoint=3)


def test_a_folder_that_is_no_run_says_what_it_is(tmp_path):
    runs = tmp_path / "runs"
    for name in ("v1", "v2"):
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.jsonl").write_text('{"step": 1}\n')
    (runs / "notes").mkdir()
    with pytest.raises(
        RunNotFoundError, match=re.escape(f"{runs} holds runs, not a run: {runs / 'v1'}, {runs / 'v2'}")
    ):
        resolve_run(runs)
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    with pytest.raises(RunNotFoundError, match="a merged model folder, not a run: already merged; use it directly"):
        resolve_run(merged)
    with pytest.raises(RunNotFoundError, match=r"notes: not a medtune run \(no adapter/, checkpoints/ or metrics"):
        resolve_run(runs / "notes")


def test_checkpoint_at_the_last_step_is_the_final_adapter(v1_run):
    """Training saves no checkpoint at its last step: adapter/ holds that step's weights."""
    last = resolve_run(v1_run, checkpoint=2)
    assert last.adapter_dir == v1_run / "adapter" and last.checkpoint == "adapter" and last.facts["step"] == 2
    with pytest.raises(RunNotFoundError, match=r"no checkpoint at step 3; saved steps: 1"):
        resolve_run(v1_run, checkpoint=3)


def test_run_folder_checkpoint_and_adapter_folder(v1_run):
    final = resolve_run(v1_run)
    assert final.adapter_dir == v1_run / "adapter" and final.output_dir == v1_run and final.checkpoint == "adapter"
    first = resolve_run(v1_run, checkpoint=1)
    assert (
        first.adapter_dir == v1_run / "checkpoints" / "step-000001"
        and first.facts["step"] == 1
        and first.output_dir == v1_run
    )
    direct = resolve_run(v1_run / "adapter")
    assert direct.adapter_dir == v1_run / "adapter" and direct.output_dir == v1_run / "adapter"
    assert final.random_weights and final.config.run_name == "v1"


def test_loads_the_4bit_base_as_trained_and_warns_about_random_weights(v1_run):
    loaded = load_for_inference(resolve_run(v1_run), device=torch.device("cpu"))
    assert any(isinstance(module, bnb.nn.Linear4bit) for module in loaded.model.modules()), (
        "the run trained on an NF4 base"
    )
    assert not loaded.model.training and loaded.model.get_base_model().config.use_cache
    lines = describe(loaded)
    assert lines[0].startswith("WARNING: random weights") and "4-bit nf4" in lines[1] and "step 2" in lines[2]
