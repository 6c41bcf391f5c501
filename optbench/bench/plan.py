"""What runs next: each worker, holding the suite's lock, claims one trial from the Optuna studies.

Every (scenario, optimizer) has a `tune` study and, once tuning is over, a `final` study (its best
hyperparameters over the final seeds). A claimed trial is RUNNING in the storage with everything a
worker needs in its user attributes (`hparams`, `seed`), so a trial requeued after its worker died
runs the same configuration in the same run directory and resumes from its checkpoint.

Grid points, coordinate-descent lines and final seeds are enqueued and popped in one locked step;
TPE asks Optuna's sampler. Because claiming is serialised, no configuration is claimed twice.
"""

from __future__ import annotations

import enum
import itertools
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

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


@dataclass(frozen=True)
class Claim:
    study: optuna.Study
    trial: optuna.Trial
    scenario: Scenario
    entry: OptimizerEntry
    phase: str
    hparams: dict[str, Any]
    seed: int


def study_name(suite: Suite, scenario: str, optimizer: str, phase: str) -> str:
    return f"{suite.name}/{scenario}/{optimizer}/{phase}"


def load_study(suite: Suite, storage, scenario: str, optimizer: str, phase: str,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    name = study_name(suite, scenario, optimizer, phase)
    return optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True,
                               pruner=pruner)


def seed_sampler(study: optuna.Study, suite: Suite, n_trials: int) -> None:
    """TPE, seeded from the suite and the trial count: each claim builds a fresh Study object, and one seed
    for all would propose the same first point every time; this stays reproducible."""
    study.sampler = optuna.samplers.TPESampler(seed=suite.tuning.sampler_seed * 1_000_003 + n_trials,
                                               constant_liar=True)


def claim_next(suite: Suite, storage) -> Claim | Next:
    """The next trial to run, claimed; WAIT if only running trials remain to decide; DONE at the end."""
    waiting = False
    for scenario, entry in suite.pairs():
        tune = load_study(suite, storage, scenario.name, entry.name, "tune")
        tune_trials = _trials(tune)
        seed_sampler(tune, suite, len(tune_trials))
        outcome = _claim_in(suite, tune, scenario, entry, "tune", _propose_tuning(suite, entry, tune_trials))
        if outcome is DONE:
            best = best_tuning(tune.get_trials(deepcopy=False))
            if best is None:
                continue  # every trial diverged or failed: nothing to repeat over seeds
            final = load_study(suite, storage, scenario.name, entry.name, "final")
            outcome = _claim_in(suite, final, scenario, entry, "final", _propose_final(suite, best, _trials(final)))
        if isinstance(outcome, Claim):
            return outcome
        waiting = waiting or outcome is WAIT
    return WAIT if waiting else DONE


def _trials(study: optuna.Study) -> list[FrozenTrial]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # fails the trials of dead workers and requeues them
    return study.get_trials(deepcopy=False)


def _claim_in(suite: Suite, study: optuna.Study, scenario: Scenario, entry: OptimizerEntry, phase: str,
              proposal: Proposal | Next | None) -> Claim | Next:
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return _pop(suite, study, scenario, entry, phase)
    if proposal is None:
        return WAIT if any(t.state == TrialState.RUNNING for t in trials) else DONE
    if proposal is WAIT:
        return WAIT
    if isinstance(proposal, Proposal):
        study.enqueue_trial(proposal.hparams if phase == "tune" else {},
                            user_attrs={"hparams": proposal.hparams, "seed": proposal.seed})
    return _pop(suite, study, scenario, entry, phase)


def _pop(suite: Suite, study: optuna.Study, scenario: Scenario, entry: OptimizerEntry, phase: str) -> Claim:
    """Ask: a waiting trial is popped (the one just enqueued, or a dead worker's requeued copy); else TPE samples."""
    with warnings.catch_warnings():  # Optuna advises heartbeats with Study.optimize; ask/tell records them here
        warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")
        warnings.filterwarnings("ignore", message=".*out of the range.*")  # a default outside a suite's range
        trial = study.ask()
    space = search_space(entry)
    if "hparams" in trial.user_attrs:
        hparams, seed = trial.user_attrs["hparams"], trial.user_attrs["seed"]
        if phase == "tune":  # record the enqueued values as parameters, so TPE and the pruner see them
            for key in hparams.keys() & space.keys():
                _suggest(trial, key, space[key])
    else:
        hparams, seed = {key: _suggest(trial, key, dim) for key, dim in space.items()}, suite.tuning.seed
        trial.set_user_attr("hparams", hparams)
        trial.set_user_attr("seed", seed)
    return Claim(study, trial, scenario, entry, phase, hparams, seed)


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


def _propose_tuning(suite: Suite, entry: OptimizerEntry, trials: list[FrozenTrial]) -> Proposal | Next | None:
    """A configuration, SAMPLE (TPE), WAIT, or None when tuning is over."""
    seen = attempted(trials)
    budget = entry.trials or suite.tuning.trials
    if budget is not None and len(seen) >= budget:
        return None
    space = search_space(entry)
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
            return Proposal(hparams, suite.tuning.seed)
    return None


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
