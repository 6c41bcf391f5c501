"""Honest timing: tokens/s and the step time count forward, backward and the update only.

Whether a piece of work is inside the timer is checked structurally (each diagnostic, evaluation, checkpoint
and log line asserts that no timed segment is open when it runs), not by comparing wall-clock figures, which
would make the test as noisy as the shared machine it runs on. benchmarks/train_speed.py measures the figures.
"""

import statistics

import pytest
import torch

import optbench
from optbench.training import diagnostics, timing
from optbench.training.sinks import JsonlSink
from optbench.training.trainer import Trainer


class FakeClock:
    """perf_counter for the timer: each call advances by the next of the given durations."""

    def __init__(self):
        self.now = 0.0
        self.pending: list[float] = []

    def __call__(self) -> float:
        if self.pending:
            self.now += self.pending.pop(0)
        return self.now


def test_warm_up_steps_are_reported_apart_and_the_step_time_is_the_steady_median(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    timer = timing.StepTimer(torch.device("cpu"), warmup=2)
    seconds = [5.0, 3.0, 0.10, 0.12, 0.11, 0.50, 0.10]  # compile, warm-up, then a steady run with one slow step
    for i, s in enumerate(seconds):
        with timer.timed():
            clock.pending = [s]
        if i == 3:
            rates = timer.interval_tokens_per_s(tokens_per_step=100)
        timer.end_step()
    assert rates == pytest.approx(100 * 1 / 0.10)  # steps 0-2 so far: the two warm-up steps left out
    assert timer.interval_tokens_per_s(100) == pytest.approx(100 * 4 / (0.12 + 0.11 + 0.50 + 0.10))
    summary = timer.summary(100)
    assert summary["step_time_s"] == pytest.approx(statistics.median(seconds[2:]))
    assert summary["tokens_per_s"] == pytest.approx(100 * 5 / sum(seconds[2:]))
    assert (summary["warmup_steps"], summary["warmup_s"]) == (2, 8.0)


def test_a_step_in_two_timed_parts_is_one_step(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    timer = timing.StepTimer(torch.device("cpu"), warmup=0)
    for part in (0.2, 0.3):  # forward/backward, then the update, with diagnostics between them
        with timer.timed():
            clock.pending = [part]
    timer.end_step()
    assert timer.steps == [pytest.approx(0.5)]


def test_diagnostics_evaluation_checkpoints_and_logging_run_outside_the_timer(tmp_path, tiny_overrides, monkeypatch):
    """With every diagnostic on at every step (and an optimizer with an extra pass), nothing but training work
    runs while a timed segment is open."""
    inside = []
    real_timed = timing.StepTimer.timed

    def timed(self):
        inside.append(True)
        try:
            with real_timed(self):
                yield
        finally:
            inside.pop()

    monkeypatch.setattr(timing.StepTimer, "timed", timing.contextlib.contextmanager(timed))
    seen = []

    def outside(name, real):
        def wrapped(*args, **kwargs):
            assert not inside, f"{name} ran inside the timed interval"
            seen.append(name)
            return real(*args, **kwargs)
        return wrapped

    for name in ("snapshot", "gradient_stats", "update_stats"):
        monkeypatch.setattr(diagnostics, name, outside(name, getattr(diagnostics, name)))
    for name in ("_eval_record", "_save"):
        monkeypatch.setattr(Trainer, name, outside(name, getattr(Trainer, name)))
    monkeypatch.setattr(JsonlSink, "log", outside("log", JsonlSink.log))
    summary = optbench.train([*tiny_overrides, "optim=sophiag", "optim.hessian_every=2", "train.steps=8",
                              "run.log_every=1", "eval.every=2", "run.ckpt_every=2"])
    assert summary["status"] == "completed"
    assert {"snapshot", "gradient_stats", "update_stats", "_eval_record", "_save", "log"} <= set(seen)
    assert summary["step_time_s"] > 0 and summary["tokens_per_s"] > 0
    assert summary["warmup_steps"] == timing.WARMUP_STEPS
