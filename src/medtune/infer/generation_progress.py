"""Batched generation behind a rich progress bar on stderr (stdout stays free for piped output)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from medtune.infer.decoding import Decoding
from medtune.infer.generation import Messages, Reply, generate_replies
from medtune.infer.runs import InferenceModel


def generate_with_progress(
    loaded: InferenceModel, conversations: list[Messages], decoding: Decoding, batch_size: int, description: str
) -> list[Reply]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with progress:
        task = progress.add_task(description, total=len(conversations))
        return generate_replies(
            loaded.model,
            loaded.tokenizer,
            conversations,
            decoding,
            batch_size,
            on_batch_done=lambda n: progress.advance(task, n),
        )
