"""What a training step costs, and nothing else: the clock behind tokens/s, MFU and the report's step time.

Only forward, backward and the optimizer's own work (clipping, the update, an extra pass an optimizer asks for,
weight averaging) run inside `timed()`. Diagnostics, evaluation, sampling, checkpoints and logging happen
between timed segments, so turning them on cannot make an optimizer look slower. On an accelerator each segment
is bracketed by a synchronisation: kernels still queued would otherwise be charged to whatever runs next.

The first `warmup` steps of a run (or of a resumed run) pay for compilation, autotuning and allocator growth;
they are reported apart (`warmup_s`) and left out of the steady-state figures.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator

import torch

WARMUP_STEPS = 3
"""Steps timed apart from the steady state: torch.compile traces on the first, CUDA's caching allocator and
cuBLAS heuristics settle over the next."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Accumulates the timed seconds of each step; answers per-interval and whole-run rates."""

    def __init__(self, device: torch.device, warmup: int = WARMUP_STEPS):
        self.device = device
        self.warmup = warmup
        self.steps: list[float] = []
        """Timed seconds of each step since this timer started (a resumed run starts a new one)."""
        self.running = False
        self._current = 0.0
        self._interval_start = 0

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """A part of the current step that counts as training work."""
        _sync(self.device)
        start = time.perf_counter()
        self.running = True
        try:
            yield
        finally:
            _sync(self.device)
            self._current += time.perf_counter() - start
            self.running = False

    def end_step(self) -> None:
        self.steps.append(self._current)
        self._current = 0.0

    def interval_tokens_per_s(self, tokens_per_step: int) -> float:
        """Tokens/s over the steps since the previous call, warm-up steps left out (unless there are only those)."""
        first = self._interval_start
        self._interval_start = len(self.steps)
        chunk = list(enumerate(self.steps[first:], start=first))
        steady = [seconds for index, seconds in chunk if index >= self.warmup] or [seconds for _, seconds in chunk]
        return _rate(tokens_per_step, steady)

    def summary(self, tokens_per_step: int) -> dict[str, float | int | None]:
        """Whole-run figures for summary.json: the median steady step, steady tokens/s, and the warm-up apart."""
        warm, steady = self.steps[:self.warmup], self.steps[self.warmup:]
        return {"step_time_s": statistics.median(steady) if steady else None,
                "tokens_per_s": _rate(tokens_per_step, steady) if steady else None,
                "warmup_steps": len(warm), "warmup_s": round(sum(warm), 4)}


def _rate(tokens_per_step: int, seconds: list[float]) -> float:
    total = sum(seconds)
    return tokens_per_step * len(seconds) / total if total > 0 else float("nan")
