"""A claim as one short transaction against the study storage, serialised with every other claim of the suite.

Everything a claim does (read the claim index, fail and requeue a dead worker's trials, enqueue and pop a trial,
stamp it) runs through a view of the Optuna storage whose sessions live inside one database transaction, as
savepoints. Claims exclude each other in the database itself, so no lock file on a shared filesystem is needed:

    SQLite       the transaction begins IMMEDIATE: it holds the database's write lock from its first statement,
                 so a second claim waits (up to the storage's busy timeout) until the first commits.
    PostgreSQL   the claim's connection takes an advisory lock keyed by the suite's name, then begins the
                 transaction, and releases the lock once it has committed (or when a killed worker's connection
                 drops); claims of other suites in the same database go on.

Either way the transaction begins once the lock is held. Optuna dates heartbeats, and judges them stale, by the
database's CURRENT_TIMESTAMP, which PostgreSQL fixes when a transaction begins: a transaction that began before a
long wait for the lock dated its trial's first heartbeat to the start of the wait, and past `grace_s` the next
claim took the live trial for a dead worker's. A worker killed in the middle of a claim leaves nothing of it
behind: the transaction rolls back.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import sqlalchemy as sa
from optuna.storages._rdb.models import TrialModel
from sqlalchemy import event, orm

from optbench.errors import UserError

DIALECTS = ("sqlite", "postgresql")

_claim_engines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per storage, the engine its claims connect through (SQLite needs one of its own; see `_claim_engine`)."""


@contextmanager
def claim_transaction(storage: optuna.storages.RDBStorage,
                      suite_name: str) -> Iterator[tuple[optuna.storages.RDBStorage, sa.Connection]]:
    """(view, connection): a storage whose every operation joins this transaction, and the transaction's own
    connection (for the claim index). Committed when the block ends, rolled back if it raises."""
    engine = _claim_engine(storage)
    with engine.connect() as connection, _advisory_lock(connection, suite_name), connection.begin():
        with _viewed(storage, connection) as view:
            yield view, connection


@contextmanager
def trial_transaction(storage: optuna.storages.RDBStorage, trial_id: int) -> Iterator[optuna.storages.RDBStorage]:
    """A view of `storage` whose operations join one transaction that holds trial `trial_id`'s row from its start,
    for a worker's tell (tell.py). SQLite: the transaction begins IMMEDIATE, the database's one write lock, which a
    claim holds too. PostgreSQL: the row is locked (`FOR UPDATE`), the lock Optuna's own change of a trial's state
    takes, so a claim failing the trial as stale waits for the tell, or the tell for the claim, and neither
    interleaves with the other; the suite's claim lock is not taken, so other claims go on meanwhile."""
    engine = _claim_engine(storage)
    trials = TrialModel.__table__
    with engine.connect() as connection, connection.begin():
        connection.execute(sa.select(trials.c.state).where(trials.c.trial_id == trial_id).with_for_update())
        with _viewed(storage, connection) as view:
            yield view


@contextmanager
def _viewed(storage: optuna.storages.RDBStorage, connection: sa.Connection) -> Iterator[optuna.storages.RDBStorage]:
    view = _view(storage, connection)
    try:
        yield view
    finally:
        view.scoped_session.remove()


@contextmanager
def _advisory_lock(connection: sa.Connection, suite_name: str) -> Iterator[None]:
    """PostgreSQL: the suite's advisory lock, a lock of the session, held around the claim's transaction (SQLite:
    nothing; its transaction takes the lock as it begins). A connection whose unlock fails is dropped rather than
    pooled: the server releases its locks when it goes."""
    if connection.dialect.name != "postgresql":
        yield
        return
    key = _lock_key(suite_name)
    connection.execute(sa.select(sa.func.pg_advisory_lock(key)))
    connection.commit()  # ends the transaction that waited; the session keeps the lock
    try:
        yield
    finally:
        try:
            connection.execute(sa.select(sa.func.pg_advisory_unlock(key)))
            connection.commit()
        except BaseException:
            connection.invalidate()
            raise


def check_dialect(url: str) -> None:
    """Claims exclude each other only where this module knows how: in a database of another kind two workers could
    claim one configuration."""
    dialect = sa.engine.make_url(url).get_backend_name()
    if dialect not in DIALECTS:
        raise UserError(f"--storage {url}: workers claim trials in SQLite or PostgreSQL only, not {dialect}; "
                        "valid: sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB")


def _view(storage: optuna.storages.RDBStorage, connection: sa.Connection) -> optuna.storages.RDBStorage:
    """The storage with its sessions bound to `connection`: Optuna's commits become savepoints of the claim's
    transaction. A shallow copy by hand: RDBStorage's own copy protocol (its pickling) opens a new engine."""
    view = object.__new__(type(storage))
    view.__dict__.update(storage.__dict__)
    sessions = orm.sessionmaker(bind=connection, join_transaction_mode="create_savepoint")
    view.scoped_session = orm.scoped_session(sessions)
    return view


def _claim_engine(storage: optuna.storages.RDBStorage) -> sa.Engine:
    """PostgreSQL: the storage's own engine. SQLite: an engine on the same file whose transactions begin
    IMMEDIATE; pysqlite would otherwise begin them lazily at the first write, and savepoints need the
    transaction under SQLAlchemy's control (SQLAlchemy's documented recipe for pysqlite)."""
    if storage.engine.dialect.name != "sqlite":
        return storage.engine
    if storage not in _claim_engines:
        engine = sa.create_engine(storage.url, **storage.engine_kwargs)

        @event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_connection, record) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        _claim_engines[storage] = engine
    return _claim_engines[storage]


def _lock_key(suite_name: str) -> int:
    """The suite's advisory-lock key: a signed 64-bit number from its name."""
    digest = hashlib.sha256(f"optbench-claim:{suite_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
