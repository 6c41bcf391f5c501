"""The one exception type for mistakes a user can make (bad config, missing data, unknown name).

The CLI turns it into a single line on stderr and exit code 2; bugs stay tracebacks.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def closest(value: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The valid choices nearest to `value` (all of them when none is near and there are few)."""
    choices = sorted(set(map(str, choices)))
    near = difflib.get_close_matches(str(value), choices, n=n, cutoff=0.5)
    return near or (choices if len(choices) <= 8 else choices[:n])


def check_choice(what: str, value: str, choices: Iterable[str]) -> None:
    """Raise a UserError naming `value` and the closest valid choices unless it is one of them."""
    choices = list(choices)
    if value not in choices:
        raise UserError(f"unknown {what} '{value}'; valid: {', '.join(closest(value, choices))}")


def check(condition: bool, message: str) -> None:
    """Raise a UserError with `message` unless `condition` holds (a user-facing assert)."""
    if not condition:
        raise UserError(message)


def check_unit_interval(prefix: str, **values: float) -> None:
    """Each value (betas, momenta) must lie in [0, 1); the UserError names the key, e.g. optim.beta2=1.0."""
    for key, value in values.items():
        check(0.0 <= value < 1.0, f"{prefix}.{key}={value} must be in [0, 1)")
