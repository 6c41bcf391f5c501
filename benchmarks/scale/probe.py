"""What one claim costs, measured where it runs: its seconds, the part spent waiting for the claim lock, the
part this thread spent on the CPU, and the SQL statements it sent to the storage.

Statements are counted by SQLAlchemy `before_cursor_execute` listeners on every engine of the process: a claim on
SQLite goes through an engine of its own (claim_transaction.py), beside the one Optuna's RDBStorage holds. Only
the calling thread's statements count, so a trial's heartbeat thread, beating meanwhile, is left out. Each
statement is one round trip to a PostgreSQL server (a commit is one more, not counted here).

The lock wait is the time spent inside the statement that takes the claim lock (claim_transaction.py: SQLite's
BEGIN IMMEDIATE, PostgreSQL's pg_advisory_xact_lock), which returns once the claims ahead have committed; what
is left of the claim is its own work, the storage's time per claim when claims queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import event

LOCK_STATEMENTS = ("BEGIN IMMEDIATE", "pg_advisory_xact_lock")


@dataclass
class Cost:
    seconds: float = 0.0
    lock_wait: float = 0.0
    cpu: float = 0.0
    statements: int = 0


class StatementCounter:
    """Counts the SQL statements this thread executes, and the seconds spent in those that take the claim lock,
    from creation until `close` (or the end of a with block)."""

    def __init__(self):
        self.count = 0
        self.lock_wait = 0.0
        self._locking_since: float | None = None
        self._thread = threading.get_ident()
        event.listen(sa.engine.Engine, "before_cursor_execute", self._before)
        event.listen(sa.engine.Engine, "after_cursor_execute", self._after)

    def _before(self, connection, cursor, statement: str, *args) -> None:
        if threading.get_ident() == self._thread:
            self.count += 1
            if any(lock in statement for lock in LOCK_STATEMENTS):
                self._locking_since = time.perf_counter()

    def _after(self, *args) -> None:
        if threading.get_ident() == self._thread and self._locking_since is not None:
            self.lock_wait += time.perf_counter() - self._locking_since
            self._locking_since = None

    @contextmanager
    def measure(self) -> Iterator[Cost]:
        """The block's cost, filled in when it ends."""
        cost, count, waited = Cost(), self.count, self.lock_wait
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            yield cost
        finally:
            cost.seconds, cost.cpu = time.perf_counter() - start, time.thread_time() - cpu
            cost.lock_wait, cost.statements = self.lock_wait - waited, self.count - count

    def close(self) -> None:
        event.remove(sa.engine.Engine, "before_cursor_execute", self._before)
        event.remove(sa.engine.Engine, "after_cursor_execute", self._after)

    def __enter__(self) -> StatementCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
