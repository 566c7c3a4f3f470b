"""`medtune merge`: the merged bf16 model gives the adapter model's logits, with tied embeddings handled."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from medtune.config import QuantConfig
from medtune.infer.merge import MergeError, merge_run
from medtune.infer.runs import resolve_run
from medtune.model.load import embeddings_tied, load_adapter, load_base_model

# peft says what the untied run did on purpose: trained two copies, and set tie_word_embeddings=False on merge
pytestmark = [
    pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True` and a tied layer:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input and output embeddings are no longer tied after merging:UserWarning"),
]
CPU = torch.device("cpu")
BF16 = QuantConfig(mode="none", compute_dtype="bf16")
"""The reference the merged model must match: the base in bf16 (not 4-bit) plus the unmerged adapter."""
BF16_TOLERANCE = 0.02
"""Logits are about 1 in size here; a bf16 rounding is 2^-8 of that, and merging adds a few roundings."""


def prompt_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "头痛三天了，怎么办？"}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text + "<think>\n", return_tensors="pt", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(("run_fixture", "tied"), [("v1_run", True), ("v2_run", True), ("v2_untied_run", False)])
def test_merged_model_matches_the_unmerged_adapter(run_fixture, tied, request, tmp_path):
    run = resolve_run(request.getfixturevalue(run_fixture))
    merged_dir = merge_run(run, tmp_path / "merged")
    base = load_base_model(run.base_model_config(), BF16, CPU)
    ids = prompt_ids(base.tokenizer)
    with torch.no_grad():
        base_logits = base.model(ids).logits.float()
        adapter_logits = load_adapter(base.model, run.adapter_dir).eval()(ids).logits.float()
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)
        merged_logits = merged(ids).logits.float()
    assert merged.dtype == torch.bfloat16
    assert (merged_logits - adapter_logits).abs().max() < BF16_TOLERANCE
    assert (adapter_logits - base_logits).abs().max() > 5 * BF16_TOLERANCE, (
        "the adapter must matter, or the test proves nothing"
    )
    assert merged.config.tie_word_embeddings is tied and embeddings_tied(merged) is tied
    if not tied:
        assert not torch.equal(merged.get_input_embeddings().weight, merged.get_output_embeddings().weight)
    assert AutoTokenizer.from_pretrained(merged_dir).chat_template == base.tokenizer.chat_template
    assert GenerationConfig.from_pretrained(merged_dir).temperature == 0.6
    assert not list(tmp_path.glob(".merged*")), "the temporary folder was renamed into place"


def test_merge_refuses_a_tied_save_that_would_drop_the_trained_lm_head(v2_untied_run, tmp_path):
    """An adapter whose facts claim tied embeddings but whose embed_tokens and lm_head differ after merging."""
    adapter = tmp_path / "adapter"
    shutil.copytree(v2_untied_run / "adapter", adapter)
    facts = json.loads((adapter / "medtune_adapter.json").read_text())
    (adapter / "medtune_adapter.json").write_text(json.dumps({**facts, "embeddings_tied": True}))
    with pytest.raises(MergeError, match="kept embed_tokens and lm_head tied.*differ"):
        merge_run(resolve_run(adapter), tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_merge_command_refuses_to_overwrite_without_asking(v1_run, cli_app, runner, tmp_path):
    out = tmp_path / "merged"
    first = runner.invoke(cli_app, ["merge", str(v1_run), "-o", str(out)])
    assert first.exit_code == 0 and "RANDOM WEIGHTS" in first.output, first.output
    again = runner.invoke(cli_app, ["merge", str(v1_run), "-o", str(out)])
    assert again.exit_code == 6 and "already exists; pass --overwrite" in again.output
    assert (
        runner.invoke(cli_app, ["merge", str(v1_run), "-o", str(out), "--checkpoint", "1", "--overwrite"]).exit_code
        == 0
    )


def test_merge_never_writes_over_a_run_or_anything_but_a_previous_merge(v1_run, cli_app, runner, tmp_path):
    """Every refusal comes before the model loads, and leaves the run whole."""
    before = sorted(path.relative_to(v1_run) for path in v1_run.rglob("*"))
    other_run = tmp_path / "runs" / "other"
    other_run.mkdir(parents=True)
    (other_run / "metrics.jsonl").write_text('{"step": 1}\n', encoding="utf-8")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep", encoding="utf-8")
    for run, output, message in [
        (v1_run, v1_run, "must lie apart from"),
        (v1_run, v1_run / "merged", "must lie apart from"),
        (v1_run, v1_run.parent, "must lie apart from"),
        (v1_run / "checkpoints" / "step-000001", v1_run / "checkpoints", "must lie apart from"),
        (v1_run, other_run, "a medtune run folder; --overwrite replaces only a previous merge or an empty folder"),
        (v1_run, tmp_path / "notes", "not a previous merge (no medtune_merge.json)"),
    ]:
        result = runner.invoke(cli_app, ["merge", str(run), "-o", str(output), "--overwrite"])
        assert result.exit_code == 6 and message in result.output, (output, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert sorted(path.relative_to(v1_run) for path in v1_run.rglob("*")) == before
    assert (other_run / "metrics.jsonl").is_file() and (tmp_path / "notes" / "todo.txt").is_file()


def test_merged_weights_get_the_permissions_a_plain_file_gets(v1_run, tmp_path):
    """safetensors writes its file as 0600 whatever the umask; the merged folder must be readable as its other files."""
    umask = os.umask(0o022)
    try:
        merged = merge_run(resolve_run(v1_run), tmp_path / "merged")
    finally:
        os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in merged.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes
