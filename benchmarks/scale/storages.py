"""A fresh, empty study storage per run, so runs are independent and leave nothing behind.

SQLite: a new file in the run's folder. PostgreSQL: a new schema in the given database, made the connections'
search path (libpq's `options`), dropped with everything in it when the run ends: the database may be shared
(the test suite's), and a schema needs no right to create databases.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from optbench.bench import layout
from optbench.errors import UserError

KINDS = ("sqlite", "postgres")


@contextmanager
def fresh(kind: str, folder: Path, postgres: str | None) -> Iterator[str]:
    """The URL of an empty storage of `kind` for one run."""
    if kind == "sqlite":
        yield layout.sqlite_url(folder)
        return
    if kind != "postgres":
        raise UserError(f"--storage {kind}: valid: {', '.join(KINDS)}")
    if not postgres:
        raise UserError("--storage postgres needs --postgres postgresql://USER:PASSWORD@HOST/DB (or "
                        "OPTBENCH_TEST_POSTGRES)")
    schema = f"optbench_scale_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres)
    try:
        with admin.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.SQLAlchemyError as err:
        admin.dispose()
        raise UserError(f"--postgres {postgres}: cannot create a schema there ({str(err).splitlines()[0]})") from None
    try:
        url = sa.engine.make_url(postgres).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
