"""What runs next: each worker claims one trial from the Optuna studies, in one transaction of the study storage.

Every (scenario, optimizer) has a `tune` study and, once tuning is over, a `final` study (its best
hyperparameters over the final seeds). A claimed trial is RUNNING in the storage with everything a
worker needs in its user attributes (`hparams`, `seed`), so a trial requeued after its worker died
runs the same configuration in the same run directory and resumes from its checkpoint.

Grid points, coordinate-descent lines and final seeds are enqueued and popped in one claim; TPE asks Optuna's
sampler. Claims are serialised by the storage itself (claim_transaction.py), so no configuration is claimed
twice; studies found done are listed in the claim index (claim_index.py) and never loaded by a claim again.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
import json
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optbench.bench.claim_index import Index, Mark
from optbench.bench.claim_transaction import claim_transaction
from optbench.bench.extend import explored, find_edge
from optbench.bench.suite import OptimizerEntry, Scenario, Suite, defaults, search_space
from optbench.optim.search_space import Choice, Dimension, LogUniform, SearchSpace, grid_points

PHASES = ("tune", "final")


class Next(enum.Enum):
    """What a claim or a proposal answers when it is not a configuration to run."""

    SAMPLE = "sample"
    """Let Optuna's sampler (TPE) propose the configuration."""
    WAIT = "wait"
    """Nothing to claim now, but trials still running elsewhere will decide what comes next."""
    DONE = "done"
    """Nothing left to run."""


SAMPLE, WAIT, DONE = Next.SAMPLE, Next.WAIT, Next.DONE


@dataclass(frozen=True)
class Proposal:
    """A configuration to run: the optimizer's hyperparameters at a seed."""

    hparams: dict[str, Any]
    seed: int
    extension: str | None = None
    """The hyperparameter this point extends beyond its grid (see extend.py); None for the method's own points."""


@dataclass(frozen=True)
class Claim:
    study: optuna.Study
    trial: optuna.Trial
    scenario: Scenario
    entry: OptimizerEntry
    phase: str
    hparams: dict[str, Any]
    seed: int
    extension: str | None = None
    tuning_study: int = 0
    """Which of the repeated tuning studies (`tuning.studies`) a tuning trial belongs to."""


def study_name(suite: Suite, scenario: str, optimizer: str, phase: str) -> str:
    return f"{suite.name}/{scenario}/{optimizer}/{phase}"


def load_study(suite: Suite, storage, scenario: str, optimizer: str, phase: str,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """The study, made on first use: looked up first, since making one that exists costs a failed insert (and every
    claim opens its studies)."""
    name = study_name(suite, scenario, optimizer, phase)
    try:
        return optuna.Study(study_name=name, storage=storage, pruner=pruner)
    except KeyError:
        return optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True,
                                   pruner=pruner)


def tuning_phase(index: int) -> str:
    """The phase in the study name of repeated tuning study `index`: tune, tune-1, tune-2, ..."""
    return "tune" if index == 0 else f"tune-{index}"


def seed_sampler(study: optuna.Study, suite: Suite, n_trials: int, index: int = 0) -> None:
    """TPE, seeded from the suite, the tuning study and the trial count: each claim builds a fresh Study object,
    and one seed for all would propose the same first point every time; this stays reproducible."""
    seed = (suite.tuning.sampler_seed + 1000 * index) * 1_000_003 + n_trials
    study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)


Stamp = Callable[[Claim], dict[str, Any]]
"""User attributes to set on a claimed trial within its claim (the worker's run directory, name, versions)."""


def claim_next(suite: Suite, storage, stamp: Stamp | None = None) -> Claim | Next:
    """The next trial to run, claimed (stamped, its first heartbeat recorded) in one transaction; WAIT if only
    running trials remain to decide; DONE at the end."""
    with claim_transaction(storage, suite.name) as (view, connection):
        found = _first(suite, view, Index(connection, suite.name))
        if isinstance(found, Claim):
            for key, value in (stamp(found) if stamp is not None else {}).items():
                found.trial.set_user_attr(key, value)
            # Alive from its claim: a RUNNING trial without a heartbeat is never taken for a dead worker's, so a
            # worker dying between its claim and its first beat would leave the trial running forever.
            view.record_heartbeat(found.trial._trial_id)
    return _bound(found, storage) if isinstance(found, Claim) else found


def _first(suite: Suite, view, index: Index) -> Claim | Next:
    """Every tuning study before any final study, each pass in the suite's order. A final trial waits on its own
    tuning and nothing waits on it, so finals left for last keep every worker busy to the end (longest path first);
    claimed pair by pair, the last pair's tuning and then its final trials ran while the other workers waited."""
    waiting, plans = False, Fingerprints(suite)
    for phase in (_tuning, _finals):
        for scenario, entry in suite.pairs():
            for outcome in phase(suite, view, index, plans, scenario, entry):
                if isinstance(outcome, Claim):
                    return outcome
                waiting = waiting or outcome is WAIT
    return WAIT if waiting else DONE


def _bound(claim: Claim, storage) -> Claim:
    """The claim with its study and trial on `storage` itself: the claim's transaction ends when it is handed out."""
    study = optuna.Study(study_name=claim.study.study_name, storage=storage)
    return dataclasses.replace(claim, study=study, trial=optuna.Trial(study, claim.trial._trial_id))


def fingerprint(suite: Suite, entry: OptimizerEntry, phase: str) -> str:
    """What decides a study's plan: the tuning protocol and the optimizer's entry, and for a final study the final
    seeds. A study marked done under one fingerprint is looked at again under another (claim_index.py)."""
    decided: dict[str, Any] = {"tuning": suite.tuning, "optimizer": entry}
    if phase == "final":
        decided["seeds"] = sorted(suite.final.seeds)
    return hashlib.sha256(json.dumps(decided, sort_keys=True, default=_plain).encode()).hexdigest()


def _plain(value: Any) -> Any:
    """For json.dumps: a dataclass as its fields, which it then encodes in turn (what dataclasses.asdict gives, without
    asdict's deep copy of every value, most of a fingerprint's cost); any other value it cannot encode as its str."""
    return vars(value) if dataclasses.is_dataclass(value) else str(value)


class Fingerprints:
    """The plan fingerprints of one claim, each computed once per optimizer and phase: a claim compares the mark of
    every study it skips with its plan, and every scenario's studies of an optimizer share that plan, so a claim late
    in a suite costs no more than an early one, however many studies it skips."""

    def __init__(self, suite: Suite):
        self.suite = suite
        self._known: dict[tuple[str, str], str] = {}

    def __call__(self, entry: OptimizerEntry, phase: str) -> str:
        if (entry.name, phase) not in self._known:
            self._known[entry.name, phase] = fingerprint(self.suite, entry, phase)
        return self._known[entry.name, phase]


def _tuning(suite: Suite, view, index: Index, plans: Fingerprints, scenario: Scenario,
            entry: OptimizerEntry) -> Iterator[Claim | Next]:
    """Tuning study 0, then the repeated tuning studies (AlgoPerf's, `tuning.studies`), each at its own seed;
    studies in the claim index are skipped. Lazy: the caller stops at the first claim."""
    key = plans(entry, "tune")
    for number in range(suite.tuning.studies):
        name = study_name(suite, scenario.name, entry.name, tuning_phase(number))
        if index.done(name, key) is None:
            tune = load_study(suite, view, scenario.name, entry.name, tuning_phase(number))
            trials = _trials(tune)
            seed_sampler(tune, suite, len(trials), number)
            outcome = _claim_in(suite, tune, scenario, entry, "tune", _propose_tuning(suite, entry, trials, number),
                                number)
            if outcome is DONE:
                best = best_tuning(tune.get_trials(deepcopy=False)) if number == 0 else None
                index.add(name, tune._study_id, Mark.of(key, best))
            yield outcome


def _finals(suite: Suite, view, index: Index, plans: Fingerprints, scenario: Scenario,
            entry: OptimizerEntry) -> Iterator[Claim | Next]:
    """The final study of the configuration tuning study 0 found best, once that study is done (its mark keeps the
    best); none where every tuning trial diverged or failed, as there is nothing to repeat over seeds."""
    tuned = index.done(study_name(suite, scenario.name, entry.name, tuning_phase(0)), plans(entry, "tune"))
    if tuned is None or tuned.best_json is None:
        return
    key = plans(entry, "final")
    name = study_name(suite, scenario.name, entry.name, "final")
    if index.done(name, key) is not None:
        return
    final = load_study(suite, view, scenario.name, entry.name, "final")
    outcome = _claim_in(suite, final, scenario, entry, "final", _propose_final(suite, tuned.best, _trials(final)))
    if outcome is DONE:
        index.add(name, final._study_id, Mark(key))
    yield outcome


def _trials(study: optuna.Study) -> list[FrozenTrial]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # fails the trials of dead workers and requeues them
    return study.get_trials(deepcopy=False)


def _claim_in(suite: Suite, study: optuna.Study, scenario: Scenario, entry: OptimizerEntry, phase: str,
              proposal: Proposal | Next | None, index: int = 0) -> Claim | Next:
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return _pop(suite, study, scenario, entry, phase, index)
    if proposal is None:
        return WAIT if any(t.state == TrialState.RUNNING for t in trials) else DONE
    if proposal is WAIT:
        return WAIT
    if isinstance(proposal, Proposal):
        attrs = {"hparams": proposal.hparams, "seed": proposal.seed}
        if proposal.extension is not None:  # recorded in the study: the report reads which points extended what
            attrs["extension"] = proposal.extension
        # Optuna's parameters are the method's own (TPE and the pruner read them); a point beyond the grid lies
        # outside their distributions and is described by its user attributes alone.
        own = phase == "tune" and proposal.extension is None
        study.enqueue_trial(proposal.hparams if own else {}, user_attrs=attrs)
    return _pop(suite, study, scenario, entry, phase, index)


def _pop(suite: Suite, study: optuna.Study, scenario: Scenario, entry: OptimizerEntry, phase: str,
         index: int) -> Claim:
    """Ask: a waiting trial is popped (the one just enqueued, or a dead worker's requeued copy); else TPE samples."""
    with warnings.catch_warnings():  # Optuna advises heartbeats with Study.optimize; ask/tell records them here
        warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")
        warnings.filterwarnings("ignore", message=".*out of the range.*")  # a default outside a suite's range
        trial = study.ask()
    space = search_space(entry)
    extension = trial.user_attrs.get("extension")
    if "hparams" in trial.user_attrs:
        hparams, seed = trial.user_attrs["hparams"], trial.user_attrs["seed"]
        if phase == "tune" and extension is None:  # the enqueued values as parameters, so TPE and the pruner see them
            for key in hparams.keys() & space.keys():
                _suggest(trial, key, space[key])
    else:
        hparams, seed = {key: _suggest(trial, key, dim) for key, dim in space.items()}, suite.tuning.seed + index
        trial.set_user_attr("hparams", hparams)
        trial.set_user_attr("seed", seed)
    return Claim(study, trial, scenario, entry, phase, hparams, seed, extension, index if phase == "tune" else 0)


def _suggest(trial: optuna.Trial, key: str, dim: Dimension) -> Any:
    if isinstance(dim, Choice):
        return trial.suggest_categorical(key, list(dim.values))
    return trial.suggest_float(key, dim.low, dim.high, log=isinstance(dim, LogUniform))


# ----------------------------------------------------------------------------- proposals


def key_of(hparams: dict[str, Any]) -> str:
    return json.dumps(hparams, sort_keys=True, default=str)


def attempted(trials: list[FrozenTrial]) -> dict[str, float | None]:
    """Configurations tried so far -> their loss (None while running; inf when diverged, pruned or failed).

    A trial failed because its worker died or was stopped is not an attempt: its requeued copy is."""
    seen: dict[str, float | None] = {}
    for t in trials:
        if "hparams" not in t.user_attrs:
            continue
        key = key_of(t.user_attrs["hparams"])
        if t.state == TrialState.COMPLETE:
            seen[key] = t.value if t.value is not None and math.isfinite(t.value) else math.inf
        elif t.state == TrialState.PRUNED or (t.state == TrialState.FAIL and "error" in t.user_attrs):
            seen[key] = math.inf
        elif t.state == TrialState.RUNNING and key not in seen:
            seen[key] = None
    return seen


def _propose_tuning(suite: Suite, entry: OptimizerEntry, trials: list[FrozenTrial],
                    index: int = 0) -> Proposal | Next | None:
    """A configuration, SAMPLE (TPE), WAIT, or None when tuning is over: the method's own points within its
    trial budget, then the extensions beyond a grid edge (which the budget does not count). Tuning study
    `index` trains at seed tuning.seed + index."""
    space, seed = search_space(entry), suite.tuning.seed + index
    proposal = _propose_own(suite, entry, space, attempted([t for t in trials if "extension" not in t.user_attrs]),
                            seed)
    if proposal is not None:
        return proposal
    return _propose_extension(suite, space, trials, seed)


def _propose_own(suite: Suite, entry: OptimizerEntry, space: SearchSpace, seen: dict[str, float | None],
                 seed: int) -> Proposal | Next | None:
    budget = entry.trials or suite.tuning.trials
    if budget is not None and len(seen) >= budget:
        return None
    if suite.tuning.method == "tpe":
        return SAMPLE
    if suite.tuning.method == "grid":
        candidates = grid(space)
    else:
        candidates = coordinate_line(space, start(entry, space), seen)
        if candidates is WAIT:
            return WAIT
    for hparams in candidates:
        if key_of(hparams) not in seen:
            return Proposal(hparams, seed)
    return None


def _propose_extension(suite: Suite, space: SearchSpace, trials: list[FrozenTrial],
                       seed: int) -> Proposal | Next | None:
    """One step beyond the edge the best configuration sits on (extend.py), once every trial has its result;
    None when no best value sits on an edge that may still be extended."""
    seen = attempted(trials)
    if any(loss is None for loss in seen.values()):
        return WAIT  # the best is not known until every running trial ends
    best = best_tuning(trials)
    if best is None:
        return None
    tried = extensions(trials)
    varied = explored([t.user_attrs["hparams"] for t in trials
                       if "hparams" in t.user_attrs and "extension" not in t.user_attrs])
    for key, dim in space.items():
        if key not in best or key not in varied:
            continue
        edge = find_edge(key, dim, best[key], tried.get(key, []), suite.tuning.extend - len(tried.get(key, [])))
        if edge is not None and edge.outward is not None:
            point = {**best, key: edge.outward}
            if key_of(point) not in seen:
                return Proposal(point, seed, extension=key)
    return None


def extensions(trials: list[FrozenTrial]) -> dict[str, list[Any]]:
    """Per hyperparameter, the values tried beyond its grid (each once, however often its trial was requeued)."""
    tried: dict[str, list[Any]] = {}
    for t in trials:
        key = t.user_attrs.get("extension")
        if key is not None and t.user_attrs["hparams"][key] not in tried.setdefault(key, []):
            tried[key].append(t.user_attrs["hparams"][key])
    return tried


def grid(space: SearchSpace) -> list[dict[str, Any]]:
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid_points(space[k]) for k in keys))]


def start(entry: OptimizerEntry, space: SearchSpace) -> dict[str, Any]:
    """Coordinate descent starts at the registry defaults, each snapped to the nearest point of its grid."""
    base = defaults(entry)
    return {key: _nearest(base[key], grid_points(dim)) for key, dim in space.items()}


def _nearest(value: Any, points: tuple[Any, ...]) -> Any:
    if value in points:
        return value
    numeric = [p for p in points if isinstance(p, int | float) and not isinstance(p, bool)]
    if not numeric or not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        return points[0]
    return min(numeric, key=lambda p: abs(math.log(p / value)) if p > 0 else math.inf)


def coordinate_line(space: SearchSpace, centre: dict[str, Any],
                    seen: dict[str, float | None]) -> list[dict[str, Any]] | Next:
    """Marin's coordinate descent, replayed from the results so far: sweep one hyperparameter over its
    grid with the others at the centre, move the centre to the line's best, go on to the next
    hyperparameter; stop after a full round without a move. Returns the current line's points, WAIT
    while that line has running trials, or [] once converged."""
    keys = list(space)
    while True:
        moved = False
        for key in keys:
            line = [{**centre, key: value} for value in grid_points(space[key])]
            results = [seen.get(key_of(point), "missing") for point in line]
            if any(r == "missing" for r in results):
                return line
            if any(r is None for r in results):
                return WAIT
            best = min(range(len(line)), key=lambda i: (results[i], line[i] != centre))
            if line[best] != centre and results[best] < seen.get(key_of(centre), math.inf):
                centre, moved = line[best], True
        if not moved:
            return []


def best_tuning(trials: list[FrozenTrial]) -> dict[str, Any] | None:
    """The hyperparameters with the lowest finite tuning loss (the first of equals)."""
    finished = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value) and "hparams" in t.user_attrs]
    if not finished:
        return None
    return min(finished, key=lambda t: (t.value, t.number)).user_attrs["hparams"]


def _propose_final(suite: Suite, best: dict[str, Any], trials: list[FrozenTrial]) -> Proposal | None:
    """The best configuration at the next final seed not yet run, or None when all are."""
    taken = {t.user_attrs.get("seed") for t in trials if "hparams" in t.user_attrs
             and (t.state != TrialState.FAIL or "error" in t.user_attrs)}
    for seed in suite.final.seeds:
        if seed not in taken:
            return Proposal(best, seed)
    return None
