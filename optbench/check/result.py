"""What a check reports: a status, the measured value in words and as data, and a note; and the whole report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PASS, FAIL, INFO = "pass", "fail", "info"
"""INFO: a measurement with no threshold (state bytes)."""


@dataclass(frozen=True)
class Outcome:
    """One check's verdict, as the check function returns it."""

    status: str
    value: str
    """What was measured, in a few words: '3.85 -> 2.25 in 40 steps'."""
    measured: dict[str, Any] = field(default_factory=dict)
    """The same for machines (--json)."""
    note: str = ""


def passed(value: str, note: str = "", **measured) -> Outcome:
    return Outcome(PASS, value, measured, note)


def failed(value: str, note: str = "", **measured) -> Outcome:
    return Outcome(FAIL, value, measured, note)


def describe(err: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    line = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def verdict(ok: bool, value: str, note: str = "", **measured) -> Outcome:
    return Outcome(PASS if ok else FAIL, value, measured, note)


@dataclass(frozen=True)
class Result:
    """An Outcome with the check's name and how long it took."""

    check: str
    outcome: Outcome
    seconds: float


@dataclass(frozen=True)
class Report:
    """Every check of one optimizer."""

    target: str
    """As named: 'adamw' or 'package.module:Class'."""
    config: dict[str, Any]
    """The optimizer config checked, every key."""
    results: tuple[Result, ...]

    @property
    def failures(self) -> list[str]:
        return [r.check for r in self.results if r.outcome.status == FAIL]

    @property
    def exit_code(self) -> int:
        """1 if any check failed, else 0 (the CLI's; 2, bad input, never gets this far)."""
        return 1 if self.failures else 0

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "config": self.config, "passed": not self.failures,
                "failures": self.failures, "seconds": round(sum(r.seconds for r in self.results), 3),
                "checks": [{"check": r.check, **dataclasses.asdict(r.outcome), "seconds": round(r.seconds, 3)}
                           for r in self.results]}
