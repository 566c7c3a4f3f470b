"""`medtune generate`: answer a file of questions in batches; each output row keeps think and answer apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune.data.formats import DataError, Sample, read_samples
from medtune.data.render import prompt_messages
from medtune.infer.decoding import Decoding
from medtune.infer.generation_progress import generate_with_progress
from medtune.infer.runs import InferenceModel
from medtune.train.metrics import write_atomic


def read_questions(path: Path, system_prompt: str) -> list[Sample]:
    """Rows in any medtune format (their question is used), or JSONL rows holding only `question`
    (and optionally `system`), which the training formats reject for lack of an answer."""
    try:
        return read_samples(path, system_prompt=system_prompt, think="optional").samples
    except DataError as err:
        if path.suffix.lower() != ".jsonl" or (err.field, err.reason) != ("answer", "missing"):
            raise
    return _question_rows(path, system_prompt)


def _question_rows(path: Path, system_prompt: str) -> list[Sample]:
    samples = []
    for line, text in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(str(path), f"invalid JSON: {err.msg} (column {err.colno})", line=line, field_name="(row)") from None
        if not isinstance(row, dict):
            raise DataError(str(path), "expected a JSON object", line=line, field_name="(row)")
        for key in ("question", "system"):
            value = row.get(key)
            if value is not None and not isinstance(value, str):
                raise DataError(str(path), f"wrong type: expected a string, got {type(value).__name__}", line=line, field_name=key)
        question = (row.get("question") or "").strip()
        if not question:
            raise DataError(str(path), "missing" if row.get("question") is None else "empty", line=line, field_name="question")
        system = (row.get("system") or "").strip() or system_prompt
        samples.append(Sample(question=question, think="", answer="", system=system, source=f"{path.name}:{line}"))
    if not samples:
        raise DataError(str(path), "no rows")
    return samples


def answer_rows(samples: list[Sample], loaded: InferenceModel, decoding: Decoding, batch_size: int) -> list[dict[str, Any]]:
    replies = generate_with_progress(loaded, [prompt_messages(s) for s in samples], decoding, batch_size, "generate")
    return [{"source": sample.source, "question": sample.question, "think": reply.think, "answer": reply.answer,
             "finish_reason": reply.finish_reason, "new_tokens": reply.new_tokens}
            for sample, reply in zip(samples, replies)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
