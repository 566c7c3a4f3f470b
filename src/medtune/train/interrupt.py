"""Ctrl-C (SIGINT) or a job scheduler's SIGTERM during training: finish the current optimizer step, save a
checkpoint, then stop.

SLURM and Kubernetes stop a job with SIGTERM, then SIGKILL after a grace period: SIGTERM is treated as the first
Ctrl-C, so the work since the last checkpoint is kept. A second Ctrl-C stops at once (the run then resumes from
its previous checkpoint); a second SIGTERM does not, since it is no one's second thought: SLURM signals every
process of a job and torchrun forwards the signal it gets to its workers, so a worker can receive it twice.
Either way training ends in `TrainingInterrupted`, whose message says the step saved and how to resume
(summary.json records the same), so a command line can print it and exit without a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medtune.train.distributed import DistContext

HANDLED = (signal.SIGINT, signal.SIGTERM)
DURING_TRAINING = "stopping after this step and saving a checkpoint"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C or SIGTERM; the message says which step is saved and how to resume."""


class GracefulInterrupt:
    """`doing`: what a first signal leads to, as the line it prints says (training: stop after the step and save;
    after the last step: the adapter is saved and the run completes). `announce`: print that line; one process of
    several says it for all, as each receives the signal."""

    def __init__(self, doing: str = DURING_TRAINING, announce: bool = True) -> None:
        self.requested = False
        self.doing = doing
        self.announce = announce
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested = True
            if not self.announce:
                return
            line = f"SIGTERM: {self.doing}" if signum == signal.SIGTERM else f"{self.doing} (Ctrl-C again to stop now)"
            print(f"\n{line}", file=sys.stderr, flush=True)  # with the other lines medtune says

    def stop_after_this_step(self, dist: DistContext) -> bool:
        """Whether to save and stop after the step just done, as every process agrees: each receives its own signal
        (torchrun forwards it to each worker), at a different point of its step, yet all must save the same step
        (under FSDP, saving gathers from every process) and stop together, none left waiting in the next step.
        Every process calls it once per step."""
        if not dist.enabled:
            return self.requested
        import torch

        flag = torch.tensor([float(self.requested)], device=dist.device())
        return bool(dist.max_(flag).item())

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in HANDLED}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signum, previous)
