"""`medtune merge`: fold the adapter into a bf16 copy of the base and save a plain transformers model.

The base is loaded in bf16 even when training used a 4-bit base: merging into quantized weights would
round the LoRA update away. The merged folder loads with `AutoModelForCausalLM.from_pretrained` and serves
with vLLM or anything else that reads Hugging Face checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from medtune.config import QuantConfig
from medtune.infer.runs import AdapterRun
from medtune.model.load import default_device, embeddings_tied, load_adapter, load_base_model
from medtune.run_folder import RunFolder, is_adapter_folder, umask_permissions

MERGE_QUANT = QuantConfig(mode="none", compute_dtype="bf16")
MERGE_FACTS_FILE = "medtune_merge.json"
EXISTS_WITHOUT_OVERWRITE = "already exists; pass --overwrite to replace it"


class MergeError(RuntimeError):
    """Merging would silently produce a model that differs from the trained one, or cannot be written."""


def check_embeddings(merged: PreTrainedModel, run: AdapterRun) -> bool:
    """Whether the merged model is saved with tied embeddings; refuses when that would lose trained weights.

    Tied means one matrix serves embed_tokens and lm_head, and a tied save stores it once. A run that kept
    them tied must come out as one matrix; a run that trained them as two copies (`tied_embeddings: untie`)
    must be saved untied, or its lm_head would be replaced by its embed_tokens on load.
    """
    embed, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    shared = embeddings_tied(merged)
    same_values = shared or (embed.shape == head.shape and torch.equal(embed, head))
    if run.facts["embeddings_tied"]:
        if not same_values:
            raise MergeError(
                f"{run.adapter_dir}: the run kept embed_tokens and lm_head tied (medtune_adapter.json), but after "
                "merging they "
                "differ; a tied save would drop the trained lm_head. Was the adapter edited after training?"
            )
        return True
    if shared and run.facts["trained_embeddings"]:
        raise MergeError(
            f"{run.adapter_dir}: the run trained {', '.join(run.facts['trained_embeddings'])} untied, but the merged "
            "model "
            "shares one matrix for both; saving it would lose one of the trained copies"
        )
    return False


def merged_model(run: AdapterRun) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The adapter folded into a bf16 copy of the base, in memory (what `merge` saves and `export` converts)."""
    loaded = load_base_model(run.base_model_config(), MERGE_QUANT, default_device())
    merged = load_adapter(loaded.model, run.adapter_dir).merge_and_unload()
    merged.config.tie_word_embeddings = check_embeddings(merged, run)
    merged.config.use_cache = True  # training turned it off; a served model wants it
    return merged, loaded.tokenizer


def check_output(run: AdapterRun, output: Path, overwrite: bool) -> None:
    """Refuses, before the model loads, an output that would replace the run itself or anything but a previous merge.

    The output must lie apart from the run folder and the adapter merged (neither them, inside them, nor holding
    them); --overwrite replaces only a previous merge's folder or an empty one.
    """
    target = output.resolve()
    for source in (run.output_dir, run.adapter_dir):
        if target.is_relative_to(source.resolve()) or source.resolve().is_relative_to(target):  # it, in it, holding it
            raise MergeError(
                f"{output}: the output must lie apart from {source}, which the merge reads (not it, inside it or "
                "holding it)"
            )
    if not output.exists():
        return
    if not overwrite:
        raise MergeError(f"{output} {EXISTS_WITHOUT_OVERWRITE}")
    folder = RunFolder(output)
    if not output.is_dir():
        what = "a file"
    elif folder.holds_run() or is_adapter_folder(output) or is_adapter_folder(folder.adapter):
        what = "a medtune run folder"
    elif any(output.iterdir()) and not (output / MERGE_FACTS_FILE).is_file():
        what = f"not a previous merge (no {MERGE_FACTS_FILE})"
    else:
        return
    raise MergeError(f"{output}: {what}; --overwrite replaces only a previous merge or an empty folder")


def merge_run(run: AdapterRun, output: Path, overwrite: bool = False) -> Path:
    """Merge and write `output` through a temporary sibling folder renamed into place.

    Beside the model goes `medtune_merge.json` (which adapter, the system prompt the run trained with), so
    `export` and `serve` of the merged folder still know the run's system prompt.
    """
    check_output(run, output, overwrite)
    merged, tokenizer = merged_model(run)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)  # left over by an interrupted merge
    try:
        merged.save_pretrained(staging)  # writes generation_config.json (the base's sampling defaults) too
        umask_permissions(staging)
        tokenizer.save_pretrained(staging)
        facts = {
            "adapter": str(run.adapter_dir),
            "step": run.facts["step"],
            "random_weights": run.random_weights,
            "system_prompt": run.config.data.system_prompt,
        }
        (staging / MERGE_FACTS_FILE).write_text(json.dumps(facts, ensure_ascii=False, indent=2), encoding="utf-8")
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
