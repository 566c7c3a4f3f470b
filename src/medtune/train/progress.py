"""A rich progress bar for training: step, loss, learning rate, tokens/s, memory and ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class TrainProgress:
    def __init__(self, name: str, total_steps: int, start_step: int, show: bool = True) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not show,
        )
        self._task = self._progress.add_task(name, total=total_steps, completed=start_step, stats="")

    def __enter__(self) -> "TrainProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, step: int, record: dict[str, Any] | None = None) -> None:
        fields = {}
        if record is not None:
            tps = record["tokens_per_s"] or 0.0
            fields["stats"] = (
                f"loss {record['loss']:.4f}  lr {record['learning_rate']:.2e}  "
                f"{tps:,.0f} tok/s  mem {record['peak_memory_gib']:.1f} GiB"
            )
        self._progress.update(self._task, completed=step, **fields)

    def note(self, text: str) -> None:
        if not self._progress.disable:
            self._progress.console.log(text)
