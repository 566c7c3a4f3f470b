"""Ctrl-C during training: finish the current optimizer step, save a checkpoint, then stop.

A second Ctrl-C stops at once (the run then resumes from its previous checkpoint). Either way training ends
in `TrainingInterrupted`, whose message says the step saved and how to resume (summary.json records the
same), so a command line can print it and exit without a traceback.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C; the message says which step is saved and how to resume."""


class GracefulInterrupt:
    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step and saving a checkpoint (Ctrl-C again to stop now)", flush=True)

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
