"""Every check in order, run on one optimizer; each is timed, and one that raises fails with the exception named
instead of stopping the rest."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable

from optbench.check import convergence, invariants, learning, precision, reproducibility, state
from optbench.check.lm import tiny_lm
from optbench.check.problems import problems
from optbench.check.result import FAIL, Outcome, Report, Result, describe
from optbench.check.subject import Subject, resolve
from optbench.config.schema import TrainConfig
from optbench.errors import UserError, check_choice
from optbench.training.device import threads
from optbench.training.rng import isolated_rng

CHECKS: dict[str, Callable[[Subject], Outcome]] = {
    "loss-falls": learning.loss_falls,
    "state-round-trip": state.round_trip,
    "resume": reproducibility.resume,
    "same-seed": reproducibility.same_seed,
    "untouched": invariants.untouched,
    "lr-zero": invariants.lr_zero,
    "bf16": precision.bf16,
    "state-bytes": state.bytes_per_parameter,
    **{problem.name: functools.partial(convergence.solve, problem=problem) for problem in problems()},
}
"""Name -> check, in the order they run and are reported."""
NAMES = tuple(CHECKS)
THREADS = 1
"""torch's intra-op threads while checking: the tiny model's matrices are too small to share out, and on a busy
machine more threads make each step many times slower."""


def run_check(name: str, subject: Subject) -> Result:
    began = time.perf_counter()
    try:
        with isolated_rng():  # the checks seed torch's stream, as runs do; the caller's is put back
            outcome = CHECKS[name](subject)
    except Exception as err:  # the optimizer's fault, reported in its row; the other checks still run
        outcome = Outcome(FAIL, f"raised {type(err).__name__}", {"error": describe(err)}, describe(err))
    return Result(name, outcome, time.perf_counter() - began)


def check_subject(subject: Subject, only: Iterable[str] = ()) -> Report:
    """Run the checks named in `only` (default: all) on `subject`."""
    only = list(only)
    for name in only:
        check_choice("check", name, NAMES)
    chosen = [name for name in NAMES if not only or name in only]
    with threads(TrainConfig(threads=THREADS)):
        _build_once(subject)
        results = tuple(run_check(name, subject) for name in chosen)
    return Report(subject.label, dataclasses.asdict(subject.cfg), results)


def _build_once(subject: Subject) -> None:
    """A config the optimizer refuses at build time (a missing weights folder, a bad keyword) is the user's input,
    a UserError; anything else it raises is left to the checks to report."""
    try:
        subject.build(tiny_lm())
    except UserError:
        raise
    except Exception:  # the optimizer's own fault: every check it breaks says so in its row
        return


def check_optimizer(target: str, overrides: Iterable[str] = (), only: Iterable[str] = ()) -> Report:
    """`check_optimizer("lion", ["optim.lr=3e-4"])` or `check_optimizer("package.module:Class")`: the library
    entry point of `optbench check-optimizer`."""
    return check_subject(resolve(target, list(overrides)), only)
