"""What one claim costs, measured where it runs: its seconds, the part spent waiting for the claim lock, the part
spent holding it, the part this thread spent on the CPU, and the SQL statements it sent to the storage.

Statements are counted by SQLAlchemy `before_cursor_execute` listeners on every engine of the process: a claim on
SQLite goes through an engine of its own (claim_transaction.py), beside the one Optuna's RDBStorage holds. Only
the calling thread's statements count, so a trial's heartbeat thread, beating meanwhile, is left out. Each
statement is one round trip to a PostgreSQL server (a commit is one more, not counted here).

The lock wait is the time spent inside the statement that takes the claim lock (claim_transaction.py: SQLite's
BEGIN IMMEDIATE, PostgreSQL's pg_advisory_lock), which returns once the claims ahead have committed. The lock
is held from then until the claim's connection, committed, goes back to its pool: the storage's time per claim
when claims queue. The rest of a claim (taking a connection before, binding the claimed trial to the storage
after) runs beside other claims.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy import event

LOCK_STATEMENTS = ("BEGIN IMMEDIATE", "pg_advisory_lock")


@dataclass
class Cost:
    seconds: float = 0.0
    lock_wait: float = 0.0
    lock_held: float = 0.0
    cpu: float = 0.0
    statements: int = 0


class StatementCounter:
    """Counts the SQL statements this thread executes, and the seconds it waits for and holds the claim lock, from
    creation until `close` (or the end of a with block)."""

    def __init__(self):
        self.count = 0
        self.lock_wait = self.lock_held = 0.0
        self._locking_since: float | None = None
        self._held: tuple[Any, float] | None = None
        """The DBAPI connection holding the claim lock, and since when."""
        self._thread = threading.get_ident()
        event.listen(sa.engine.Engine, "before_cursor_execute", self._before)
        event.listen(sa.engine.Engine, "after_cursor_execute", self._after)
        event.listen(sa.pool.Pool, "checkin", self._checkin)

    def _before(self, connection, cursor, statement: str, *args) -> None:
        if threading.get_ident() == self._thread:
            self.count += 1
            if any(lock in statement for lock in LOCK_STATEMENTS):
                self._locking_since = time.perf_counter()

    def _after(self, connection, *args) -> None:
        if threading.get_ident() == self._thread and self._locking_since is not None:
            now = time.perf_counter()
            self.lock_wait += now - self._locking_since
            self._locking_since = None
            self._held = (connection.connection.dbapi_connection, now)

    def _checkin(self, dbapi_connection, record) -> None:
        if threading.get_ident() == self._thread and self._held is not None and self._held[0] is dbapi_connection:
            self.lock_held += time.perf_counter() - self._held[1]
            self._held = None

    @contextmanager
    def measure(self) -> Iterator[Cost]:
        """The block's cost, filled in when it ends."""
        cost, count, waited, held = Cost(), self.count, self.lock_wait, self.lock_held
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            yield cost
        finally:
            cost.seconds, cost.cpu = time.perf_counter() - start, time.thread_time() - cpu
            cost.lock_wait, cost.lock_held = self.lock_wait - waited, self.lock_held - held
            cost.statements = self.count - count

    def close(self) -> None:
        event.remove(sa.engine.Engine, "before_cursor_execute", self._before)
        event.remove(sa.engine.Engine, "after_cursor_execute", self._after)
        event.remove(sa.pool.Pool, "checkin", self._checkin)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def walk_cpu_ms(suite, storage, repeats: int = 5) -> float:
    """The CPU time of a claim in a finished suite (median of `repeats`, ms): one that reads the claim index and walks
    every study found done, loading none, the only part of a claim that grows with the number of studies."""
    from optbench.bench import plan

    spent = []
    for _ in range(repeats):
        start = time.thread_time()
        if plan.claim_next(suite, storage) is not plan.DONE:
            raise ValueError(f"suite {suite.name} is not done: a walk over its studies would claim")
        spent.append(time.thread_time() - start)
    return statistics.median(spent) * 1000
