"""`medtune eval`: eval loss and perplexity, generation metrics, and robustness to masked medical terms.

Replies are decoded greedily, so two evaluations of the same adapter give the same numbers. Robustness
uses the v3 augmentation's masking with probability 1 on the question, drawn from a fixed seed with the
default masking settings (not the run's own), so every version is tested on the same masked questions.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medtune.config import AugmentConfig, RunConfig
from medtune.data.augment import Augmenter
from medtune.data.batching import trained_token_counts
from medtune.data.formats import DataError, Sample
from medtune.data.lexicon import load_lexicon
from medtune.data.render import encode_sample, prompt_messages
from medtune.data.split import ReadResult, read_data_file, split_rows
from medtune.infer.decoding import Decoding
from medtune.infer.generate import OutputError, output_problem
from medtune.infer.generation import Reply
from medtune.infer.generation_progress import generate_with_progress
from medtune.infer.runs import AdapterRun, InferenceModel
from medtune.infer.scores import reply_scores
from medtune.run_folder import EVAL_BASE, EVAL_PREFIX, STEP_DIR, RunFolder, write_atomic, write_json
from medtune.train.loss import FusedHeadLoss, summed_loss_over

SCORES = ("bleu4", "rouge_l", "think_compliance", "term_recall")
MASK_SEED = 0


@dataclass
class EvalData:
    samples: list[Sample]
    source: str
    skipped_rows: int
    data_file: Path | None = None
    """The `--data` file, which names the results (eval.<stem>.json); None for the run's own validation rows."""
    first: int | None = None
    """`--limit N` when it left rows out: the results are on the first N rows only, and named so."""


def _reference_rows(cfg: RunConfig, data: str) -> ReadResult:
    """`--data` read as the run read its rows. A row without what eval scores against says so, and where to go for
    questions alone, rather than the training setting that would accept it."""
    try:
        return read_data_file(cfg.data, data, max_rows=None)
    except DataError as err:
        if not err.no_reference:
            raise
        needs = "answer" if cfg.data.think == "optional" else "reasoning and answer"
        raise DataError(
            err.file,
            f"{err.reason.split('; ')[0]}; medtune eval scores replies against each row's reference {needs}; for "
            "questions without answers, use `medtune generate`",
            line=err.line,
            field_name=err.field,
        ) from None


def eval_data(cfg: RunConfig, data: str | None, limit: int | None) -> EvalData:
    """`--data` (every row), or else the run's own validation rows, split as training split them (`split_rows`)."""
    data_file = None
    if data is not None:
        result = _reference_rows(cfg, data)
        samples, source, skipped, data_file = result.samples, data, result.skipped, Path(result.file)
    else:
        split = split_rows(cfg.data, cfg.train.seed)
        samples, source = split.validation, split.validation_source
        skipped = (split.validation_file or split.train_file).skipped
        if not samples:
            raise DataError(
                cfg.data.train,
                f"the run held out no validation rows (val_fraction {cfg.data.val_fraction}); pass --data",
            )
    first = limit if limit is not None and limit < len(samples) else None
    return EvalData(samples[:first] if first else samples, source, len(skipped), data_file, first)


@torch.no_grad()
def loss_over(loaded: InferenceModel, samples: list[Sample], batch_size: int) -> dict[str, Any]:
    """Token-weighted mean loss on the assistant turns (think and answer), as training's eval loss:
    encoded with the run's max_length, samples whose answer was cut away entirely left out."""
    cfg = loaded.run.config
    encoded = [encode_sample(loaded.tokenizer, sample, cfg.data.max_length) for sample in samples]
    kept = [item for item in encoded if not item.answer_cut]
    total = float(
        summed_loss_over(
            loaded.model,
            FusedHeadLoss.of(loaded.model, cfg.train.loss_chunk_tokens),
            kept,
            batch_size=batch_size,
            row_tokens=cfg.data.max_length,
            packing=False,
            pad_id=loaded.tokenizer.pad_token_id,
            device=loaded.device,
        )[0]
    )
    tokens = trained_token_counts(kept)[0]
    loss = total / tokens if tokens else None
    return {
        "eval_loss": loss,
        "perplexity": math.exp(loss) if loss is not None else None,
        "eval_tokens": tokens,
        "answer_cut": len(encoded) - len(kept),
    }


def mask_questions(samples: list[Sample], seed: int) -> list[tuple[int, Sample, int]]:
    """(index, sample with 1-2 question terms masked, terms masked) for every sample whose question holds a term."""
    augmenter = Augmenter.from_config(AugmentConfig(enabled=True, probability=1.0, fields=["question"]), seed)
    masked = []
    for index, sample in enumerate(samples):
        new_sample, terms = augmenter.apply(sample, 0, index)
        if terms:
            masked.append((index, new_sample, len(terms)))
    return masked


def _drop(clean: dict[str, Any], masked: dict[str, Any]) -> dict[str, float | None]:
    return {
        key: clean[key] - masked[key] if clean[key] is not None and masked[key] is not None else None for key in SCORES
    }


def evaluate(loaded: InferenceModel, data: EvalData, decoding: Decoding, batch_size: int) -> tuple[dict, list[dict]]:
    """The eval.json record and one row per reply (clean and masked), for eval.replies.jsonl."""
    samples = data.samples
    lexicon = load_lexicon("medical")
    answers = [sample.answer for sample in samples]
    replies = generate_with_progress(
        loaded, [prompt_messages(s) for s in samples], decoding, batch_size, "eval: replies"
    )
    clean = reply_scores(replies, answers, lexicon)
    result: dict[str, Any] = {**loss_over(loaded, samples, batch_size), **clean, "n": len(samples)}

    masked = mask_questions(samples, MASK_SEED)
    masked_replies: list[Reply] = []
    if masked:
        indices = [index for index, _, _ in masked]
        masked_samples = [sample for _, sample, _ in masked]
        masked_replies = generate_with_progress(
            loaded, [prompt_messages(s) for s in masked_samples], decoding, batch_size, "eval: masked"
        )
        subset_answers = [answers[i] for i in indices]
        robust = reply_scores(masked_replies, subset_answers, lexicon)
        clean_subset = reply_scores([replies[i] for i in indices], subset_answers, lexicon)
        result["robust"] = {
            "n": len(masked),
            "terms_masked": sum(count for _, _, count in masked),
            "eval_loss": loss_over(loaded, masked_samples, batch_size)["eval_loss"],
            "eval_loss_unmasked": loss_over(loaded, [samples[i] for i in indices], batch_size)["eval_loss"],
            **{key: robust[key] for key in (*SCORES, "think_chars", "answer_chars")},
        }
        result["robust_drop"] = _drop(clean_subset, robust)
    else:
        result["robust"], result["robust_drop"] = {"n": 0}, {key: None for key in SCORES}

    result["finish_reasons"] = dict(Counter(reply.finish_reason for reply in replies))
    rows = [_reply_row(sample, reply, masked=False) for sample, reply in zip(samples, replies)]
    rows += [_reply_row(sample, reply, masked=True) for (_, sample, _), reply in zip(masked, masked_replies)]
    return result, rows


def _reply_row(sample: Sample, reply: Reply, masked: bool) -> dict[str, Any]:
    return {
        "source": sample.source,
        "masked": masked,
        "question": sample.question,
        "think": reply.think,
        "answer": reply.answer,
        "reference_answer": sample.answer,
        "finish_reason": reply.finish_reason,
        "new_tokens": reply.new_tokens,
    }


def default_output(run: AdapterRun, with_adapter: bool, data: EvalData) -> Path:
    """eval.json for the final adapter, eval.step-000400.json for a checkpoint, eval.base.json without adapter; on a
    `--data` file, its stem after `eval.` (eval.val.json, eval.val.step-000400.json, eval.val.base.json), so results
    on other rows never replace those on the run's own; `first-N` in the name when `--limit` left rows out.

    Raises:
        DataError: the file's stem would make the name of a result on the run's own rows (`base`, `step-000400`,
            `first-8`).
    """
    stem = data.data_file.stem if data.data_file is not None else None
    if stem is not None and (stem == EVAL_BASE or STEP_DIR.match(stem) or re.fullmatch(r"first-\d+", stem)):
        raise DataError(
            str(data.data_file),
            f"results on it would be named {EVAL_PREFIX}.{stem}.json, a name eval gives results on the run's own "
            "rows; pass -o FILE",
        )
    return RunFolder(run.output_dir).evaluation(run.checkpoint if with_adapter else None, stem, data.first)


def run_eval(
    loaded: InferenceModel, data: EvalData, decoding: Decoding, batch_size: int, output: Path
) -> dict[str, Any]:
    """Evaluate and write `output` (eval.json) and, next to it, every reply (`<stem>.replies.jsonl`)."""
    metrics, rows = evaluate(loaded, data, decoding, batch_size)
    run = loaded.run
    record = {
        **metrics,
        "checkpoint": run.checkpoint if loaded.with_adapter else "none (base model)",
        "random_weights": run.random_weights,
        "data": data.source,
        "skipped_rows": data.skipped_rows,
        "decoding": decoding.as_dict(),
        "model": {
            "base": run.facts["base_model"]["name_or_path"],
            "quant": run.facts["quant"]["mode"],
            "adapter": str(run.adapter_dir) if loaded.with_adapter else None,
            "step": run.facts["step"],
        },
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(replies_path(output), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    write_json(output, record)
    return record


def check_output(output: Path, data: EvalData) -> None:
    """Raises OutputError for an output (or its replies file beside it) that is a folder or the --data file."""
    replies = replies_path(output)
    for path in (output, replies):
        problem = output_problem(path, data.data_file, "--data")
        if problem is not None:
            where = f"{output}" if path == output else f"{output} would write its replies to {replies}, which"
            raise OutputError(f"{where} {problem}: -o names the file the results are written to")


def replies_path(output: Path) -> Path:
    return output.with_suffix(".replies.jsonl")
