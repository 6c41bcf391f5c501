"""After a run: was every planned trial run exactly once, and is nothing lost or left running?

Read from the storage (the claims themselves: a trial exists there only once a claim committed) and the workers'
claim logs:

    duplicate   a trial handed to two workers (the logs), or two trials of one study run to an end under one run
                key (the same configuration at the same seed), or a requeued copy under another run key than the
                trial it replaces
    lost        a trial left RUNNING or WAITING; a configuration whose every attempt died with its worker; a
                planned configuration (a tuning study's grid point, a final seed of the best configuration) with
                no trial run to an end; a suite the planner does not find done

A trial failed by the heartbeat check (its worker was killed; no `error` attribute) is no duplicate of the
requeued copy that reran it, as long as the copy carries its run key.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from optbench.bench import plan
from optbench.bench.storage import open_storage
from optbench.bench.suite import Suite, run_key, search_space


@dataclass
class Audit:
    ended: int = 0
    """Configurations run to an end: completed (diverged ones included), pruned, or failed by their own error."""
    pruned: int = 0
    diverged: int = 0
    requeued: int = 0
    """Trials failed because their worker died, each rerun by a copy under the same run key."""
    duplicates: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def audit(suite: Suite, url: str, claims: list[dict[str, Any]]) -> Audit:
    """Grid suites only: their plan (each grid point, within the trial budget, then the final seeds) is known."""
    if suite.tuning.method != "grid":
        raise ValueError(f"the audit knows the plan of grid suites only, not tuning.method={suite.tuning.method}")
    storage = open_storage(url, suite.execution)
    try:
        return _audit(suite, storage, claims)
    finally:
        storage.engine.dispose()  # a PostgreSQL schema is dropped after the run: no connection may stay open


def _audit(suite: Suite, storage, claims: list[dict[str, Any]]) -> Audit:
    found = Audit()
    handed = collections.Counter((c["study"], c["number"]) for c in claims if c["outcome"] == "claim")
    found.duplicates += [f"{study} trial {number} was handed to {n} workers"
                         for (study, number), n in sorted(handed.items()) if n > 1]
    studies = {s.study_name: s._study_id for s in storage.get_all_studies()
               if s.study_name.startswith(f"{suite.name}/")}
    trials = {name: storage.get_all_trials(study_id, deepcopy=False) for name, study_id in studies.items()}
    for name, study_trials in trials.items():
        check_study(name, study_trials, found)
    for scenario, entry in suite.pairs():
        tune = trials.get(plan.study_name(suite, scenario.name, entry.name, "tune"), [])
        budget = entry.trials or suite.tuning.trials  # grid points are taken in order, up to the budget
        points = plan.grid(search_space(entry))[:budget]
        planned = {"tune": [run_key(point, suite.tuning.seed) for point in points]}
        best = plan.best_tuning(tune)
        if best is not None:
            planned["final"] = [run_key(best, seed) for seed in suite.final.seeds]
        for phase, keys in planned.items():
            name = plan.study_name(suite, scenario.name, entry.name, phase)
            ended = {key_of(t) for t in trials.get(name, []) if has_ended(t)}
            found.lost += [f"{name}: planned {key} never ran to an end" for key in keys if key not in ended]
    if not planner_done(suite, storage):
        found.lost.append("the planner still finds work in the suite")
    return found


class _WorkLeft(Exception):
    pass


def planner_done(suite: Suite, storage) -> bool:
    """Whether a claim finds the suite done, without claiming: a claim that finds a trial calls its stamp, which
    refuses it here, and a failed claim leaves nothing behind (claim_transaction.py)."""
    def refuse(claim: plan.Claim) -> dict[str, Any]:
        raise _WorkLeft
    try:
        return plan.claim_next(suite, storage, stamp=refuse) is plan.DONE
    except _WorkLeft:
        return False


def check_study(name: str, trials: list[FrozenTrial], found: Audit) -> None:
    by_number = {t.number: t for t in trials}
    attempts: dict[str, list[FrozenTrial]] = collections.defaultdict(list)
    for t in trials:
        attempts[key_of(t)].append(t)
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            found.lost.append(f"{name} trial {t.number} was left {t.state.name}")
        original = t.system_attrs.get("failed_trial")
        if original is not None and key_of(by_number[original]) != key_of(t):
            found.duplicates.append(f"{name} trial {t.number} requeues trial {original} under another run key")
    for key, group in attempts.items():
        ended = [t for t in group if has_ended(t)]
        died = [t for t in group if t.state == TrialState.FAIL and "error" not in t.user_attrs]
        found.requeued += len(died)
        if len(ended) > 1:
            found.duplicates.append(f"{name} {key} ran to an end {len(ended)} times "
                                    f"(trials {', '.join(str(t.number) for t in ended)})")
        if died and not ended:
            found.lost.append(f"{name} {key}: every attempt died with its worker")
        found.ended += min(1, len(ended))
        found.pruned += sum(t.state == TrialState.PRUNED for t in ended[:1])
        found.diverged += sum(t.state == TrialState.COMPLETE and not math.isfinite(t.value) for t in ended[:1])


def key_of(trial: FrozenTrial) -> str:
    return run_key(trial.user_attrs["hparams"], trial.user_attrs["seed"])


def has_ended(trial: FrozenTrial) -> bool:
    """Run to an end by its worker: completed, pruned, or crashed on its own (not failed for a dead worker)."""
    return (trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (trial.state == TrialState.FAIL and "error" in trial.user_attrs))
