"""Components the test suite needs from outside the package (../shared/data, Chromium, PostgreSQL).

On a developer's machine a missing one skips the tests that need it, with the reason; under CI (the `CI`
environment variable set, as `.ci/run` is run) it fails them, so a broken install step cannot turn into a
green run that tested less.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def missing(what: str) -> NoReturn:
    """Skip, or under CI fail, the current test because `what` is not there."""
    if under_ci():
        pytest.fail(f"{what}; CI must provide it (see .ci/run)", pytrace=False)
    pytest.skip(what)
