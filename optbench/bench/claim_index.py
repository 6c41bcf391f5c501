"""The claim index: the studies a claim found done, in a table of the study storage beside Optuna's own.

A study is done when its protocol has nothing left to propose and none of its trials waits or runs: no claim
can add to it, and no worker's trial can still change it. A claim reads the index once (one query), skips the
studies it lists, and loads only those that can have work, so its cost stays constant while a suite finishes
instead of growing with every study it would otherwise load to rediscover that it is over. The row is written
in the transaction of the claim that found the study done (claim_transaction.py).

Each row keeps the fingerprint of what decided that study's plan (plan.fingerprint): a final study gains work
when final.seeds grows between runs, and a row whose fingerprint is not today's is no mark. Tuning study 0's
row also keeps its best configuration, which its final study repeats over the seeds, so the final study is
planned without loading tuning study 0 again. Rows are keyed by Optuna's study id: a study deleted and made
again under the same name is not taken for done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from optuna.storages._rdb.models import StudyModel

_METADATA = sa.MetaData()
TABLE = sa.Table(
    "optbench_done_studies", _METADATA,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("best", sa.Text, nullable=True),
)


@dataclass(frozen=True)
class Mark:
    """A done study: the fingerprint of the plan it was done under, and its best configuration (tuning study 0) as
    the JSON the index holds, decoded only where a claim needs it (a claim reads every mark, and needs the best
    of only the pairs whose final study is not done yet)."""

    fingerprint: str
    best_json: str | None = None

    @classmethod
    def of(cls, fingerprint: str, best: dict[str, Any] | None = None) -> Mark:
        return cls(fingerprint, json.dumps(best) if best is not None else None)

    @property
    def best(self) -> dict[str, Any] | None:
        return json.loads(self.best_json) if self.best_json is not None else None


def create(engine: sa.Engine) -> None:
    """The index table, where it is not there yet (a storage written before the index had none: its studies are
    then loaded once more each, and marked as they are found done)."""
    _METADATA.create_all(engine)


class Index:
    """The index as one claim sees it: the marks read when its transaction began, and the marks it adds."""

    def __init__(self, connection: sa.Connection, suite_name: str):
        self.connection = connection
        self.marks = read(connection, suite_name)

    def done(self, name: str, fingerprint: str) -> Mark | None:
        """The study's mark, where it was made under the plan of `fingerprint`."""
        found = self.marks.get(name)
        return found if found is not None and found.fingerprint == fingerprint else None

    def add(self, name: str, study_id: int, done: Mark) -> None:
        """Mark study `name` done, in the storage and for the rest of this claim."""
        mark(self.connection, study_id, done)
        self.marks[name] = done


def read(connection: sa.Connection, suite_name: str) -> dict[str, Mark]:
    """Study name -> mark, for every study of the suite in the index."""
    studies = StudyModel.__table__
    query = (sa.select(studies.c.study_name, TABLE.c.fingerprint, TABLE.c.best)
             .join_from(TABLE, studies, TABLE.c.study_id == studies.c.study_id)
             .where(studies.c.study_name.startswith(f"{suite_name}/", autoescape=True)))
    return {name: Mark(fingerprint, best) for name, fingerprint, best in connection.execute(query).all()}


def mark(connection: sa.Connection, study_id: int, done: Mark) -> None:
    """Record `study_id` as done, replacing a mark made under another plan."""
    connection.execute(sa.delete(TABLE).where(TABLE.c.study_id == study_id))
    connection.execute(sa.insert(TABLE).values(study_id=study_id, fingerprint=done.fingerprint, best=done.best_json))
