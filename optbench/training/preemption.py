"""Stop at a step boundary on SIGTERM or SIGINT, so the run can checkpoint and a requeue resumes it.

Slurm preempts with SIGTERM (then SIGKILL after a grace period); Ctrl-C sends SIGINT. The first
signal only raises a flag that the loop reads after the current step; a second SIGINT means the
user insists and interrupts at once, as Python would.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """A context manager installing the handlers; `requested` names the signal once one arrived."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
