"""Training progress: a live bar on a terminal, plain lines anywhere else, and the summary a run ends with.

A log file, CI or `nohup` has no terminal to redraw a bar in, so there every logging step prints one plain
line (step, loss, learning rate, tokens/s, memory, elapsed, ETA). No line is wrapped or cut at a console
width: a log line ends with its text.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, log_path=False)


def say(text: str) -> None:
    """One line on the progress stream (stderr), never wrapped, cut, or highlighted."""
    console.out(text, highlight=False)


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def train_stats(record: dict[str, Any]) -> str:
    """A train record of metrics.jsonl in a few words, as the bar and the plain lines show it."""
    tps = record["tokens_per_s"] or 0.0
    return (
        f"loss {record['loss']:.4f}  lr {record['learning_rate']:.2e}  {tps:,.0f} tok/s  "
        f"mem {record['peak_memory_gib']:.1f} GiB"
    )


class TrainProgress:
    def __init__(self, name: str, total_steps: int, start_step: int, show: bool = True) -> None:
        self.show = show
        self.interactive = show and console.is_terminal
        self.total_steps, self.start_step = total_steps, start_step
        self._started = time.perf_counter()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.interactive,
        )
        self._task = self._progress.add_task(name, total=total_steps, completed=start_step, stats="")

    def __enter__(self) -> TrainProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, step: int, record: dict[str, Any] | None = None) -> None:
        fields = {"stats": train_stats(record)} if record is not None else {}
        self._progress.update(self._task, completed=step, **fields)
        if record is not None and self.show and not self.interactive:
            say(f"step {step}/{self.total_steps}  {fields['stats']}  {self._times(step)}")

    def _times(self, step: int) -> str:
        """Elapsed in this session, and the remaining steps at its pace so far."""
        elapsed = time.perf_counter() - self._started
        done = step - self.start_step
        eta = clock(elapsed / done * (self.total_steps - step)) if done > 0 else "?"
        return f"elapsed {clock(elapsed)}  ETA {eta}"

    def note(self, text: str) -> None:
        if self.show:
            say(text)


def summary_lines(summary: dict[str, Any], adapter_dir: str) -> list[str]:
    """The lines a finished run ends with, from its summary.json: what was trained, how it went, where it is."""
    model = summary["model"]
    weights = "; RANDOM WEIGHTS: the losses test the pipeline, not medical quality" if summary["random_weights"] else ""
    last_train, last_eval = summary.get("last_train"), summary.get("last_eval")
    losses = [f"final loss {last_train['loss']:.4f}" if last_train else "no training loss logged"]
    losses.append(
        f"eval_loss {last_eval['eval_loss']:.4f} (step {last_eval['step']})"
        if last_eval
        else "no eval loss (no validation rows or eval_steps null)"
    )
    tokens_per_s = f"{summary['tokens_per_s']:,.0f} tokens/s" if summary.get("tokens_per_s") else "tokens/s unknown"
    return [
        f"finished {summary['run_name']}: {summary['step']} steps",
        f"  model    {model['name_or_path']} ({model['size']}, {model['architecture']}){weights}",
        f"  losses   {', '.join(losses)}",
        f"  speed    {tokens_per_s}; {clock(summary['train_seconds'])} in training steps, "
        f"{clock(summary['wall_seconds'])} wall time in this session",
        f"  adapter  {adapter_dir}",
    ]
