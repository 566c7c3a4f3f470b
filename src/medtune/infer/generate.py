"""`medtune generate`: answer a file of questions in batches; each output row keeps think and answer apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune.config import DataConfig
from medtune.data.formats import Sample, read_samples
from medtune.data.render import prompt_messages
from medtune.infer.decoding import Decoding
from medtune.infer.generation_progress import generate_with_progress
from medtune.infer.runs import InferenceModel
from medtune.run_folder import write_atomic


class OutputError(ValueError):
    """`-o` names a folder, or the file the command reads; the message says which (the CLI shows it as --output's)."""


def output_problem(output: Path, read: Path | None, read_option: str) -> str | None:
    """How `output` cannot take a command's results, checked before the model loads: `is a folder` (writing it would
    fail only after every reply was generated), or `is the <read_option> file` (the results would replace the rows
    read); None when it can."""
    if output.is_dir():
        return "is a folder"
    if read is not None and output.resolve() == read.resolve():
        return f"is the {read_option} file"
    return None


def check_output(output: Path, questions: Path) -> None:
    """Raises OutputError for an output that is a folder or the questions file itself."""
    problem = output_problem(output, questions, "--input")
    if problem is not None:
        raise OutputError(f"{output} {problem}: -o names the file the answers are written to")


def read_questions(path: Path, data: DataConfig) -> list[Sample]:
    """Rows in any medtune format (their question is used), read with the run's data settings (format, columns,
    encoding, system prompt, tags), as training and eval read theirs; question/think/answer rows may hold only
    `question` (and optionally `system`). Bad rows get the data reader's file:line:field error."""
    return read_samples(
        path,
        format=data.format,
        system_prompt=data.system_prompt,
        columns=data.columns,
        encoding=data.encoding,
        think="optional",
        literal_tags=data.literal_tags,
        answer="optional",
    ).samples


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
