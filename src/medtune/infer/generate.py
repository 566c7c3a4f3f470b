"""`medtune generate`: answer a file of questions in batches; each output row keeps think and answer apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune.data.formats import Sample, read_samples
from medtune.data.render import prompt_messages
from medtune.infer.decoding import Decoding
from medtune.infer.generation_progress import generate_with_progress
from medtune.infer.runs import InferenceModel
from medtune.run_folder import write_atomic


def read_questions(path: Path, system_prompt: str) -> list[Sample]:
    """Rows in any medtune format (their question is used); question/think/answer rows may hold only
    `question` (and optionally `system`). Bad rows get the data reader's file:line:field error."""
    return read_samples(path, system_prompt=system_prompt, think="optional", answer="optional").samples


def answer_rows(
    samples: list[Sample], loaded: InferenceModel, decoding: Decoding, batch_size: int
) -> list[dict[str, Any]]:
    replies = generate_with_progress(loaded, [prompt_messages(s) for s in samples], decoding, batch_size, "generate")
    return [
        {
            "source": sample.source,
            "question": sample.question,
            "think": reply.think,
            "answer": reply.answer,
            "finish_reason": reply.finish_reason,
            "new_tokens": reply.new_tokens,
        }
        for sample, reply in zip(samples, replies)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
