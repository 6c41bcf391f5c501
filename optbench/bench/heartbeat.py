"""A claimed trial's heartbeat, and what it learns: whether the worker still holds its claim.

While a worker runs a trial, a thread records the trial's heartbeat every `heartbeat_s` and then reads the trial's
state (one more storage call). A live worker can still lose its claim: when its beats lapse for `grace_s` (a long
stall, a storage outage, a machine under load), the next claim fails the trial as a dead worker's and requeues a
copy. The thread sees the trial no longer RUNNING and records `lost`; the run stops at its next record (ClaimObserver,
or multirank.train for a run on several ranks) and the worker drops its result (tell.py).

A beat that fails (a dropped connection, a locked SQLite) is retried at the next interval: the thread never dies of
it, since a dead thread would let the trial go stale while the worker trains on. Each streak of failed beats is one
line on stderr, and its end another.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from optuna.trial import TrialState

from optbench.bench.plan import Claim


@dataclass(frozen=True)
class Lost:
    """A claim the worker no longer holds: its trial was failed as stale by another worker's claim at `when`."""

    when: datetime | None

    def line(self, claim: Claim) -> str:
        when = self.when.strftime("%Y-%m-%d %H:%M:%S") if self.when is not None else "an unknown time"
        return (f"trial {claim.trial.number} ({claim.study.study_name.split('/', 1)[1]}): its claim was lost "
                f"(failed as stale by another worker at {when}); result dropped, its requeued copy reruns it")


def lost_claim(storage, trial_id: int) -> Lost | None:
    """Lost when the trial is no longer RUNNING in `storage` (only a stale check ends another worker's trial)."""
    trial = storage.get_trial(trial_id)
    return None if trial.state == TrialState.RUNNING else Lost(trial.datetime_complete)


class Heartbeat:
    """While the block runs, beat every `interval_s` from a daemon thread (the claim recorded the first beat) and
    watch the claim; `lost` is set once the trial was failed by someone else, and the beats stop."""

    def __init__(self, storage, claim: Claim, interval_s: float):
        self.storage, self.interval_s = storage, interval_s
        self.trial_id, self.number = claim.trial._trial_id, claim.trial.number
        self.lost: Lost | None = None
        self.failed_beats = 0
        """Beats failed in a row; 0 while the storage answers."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while self.lost is None and not self._stop.wait(self.interval_s):
            self.beat()

    def beat(self) -> None:
        """One beat and a look at the claim; a storage error is reported, not raised (the next beat retries)."""
        try:
            self.storage.record_heartbeat(self.trial_id)
            lost = lost_claim(self.storage, self.trial_id)
        except Exception as err:  # any storage error: the thread must outlive it to beat again
            self.failed_beats += 1
            if self.failed_beats == 1:
                first = str(err).splitlines()[0][:200] if str(err) else ""
                print(f"trial {self.number}: heartbeat failed ({type(err).__name__}: {first}); retrying every "
                      f"{self.interval_s:g} s", file=sys.stderr, flush=True)
            return
        if self.failed_beats:
            print(f"trial {self.number}: heartbeat recovered after {self.failed_beats} failed beats",
                  file=sys.stderr, flush=True)
            self.failed_beats = 0
        self.lost = lost


class ClaimObserver:
    """Stops a run in this process at its first record after the heartbeat found the claim lost, with status "lost"
    and without writing its summary: the run directory is its requeued copy's from then on."""

    def __init__(self, beat: Heartbeat):
        self.beat = beat

    def log(self, record: dict[str, Any]) -> None:
        from optbench.training.trainer import StopTraining

        if self.beat.lost is not None:
            raise StopTraining("lost", write=False)

    def close(self) -> None:
        pass
