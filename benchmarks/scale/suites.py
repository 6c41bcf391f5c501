"""The suites the scale benchmark runs, built as `optbench bench` would run them (validated, then frozen).

A synthetic suite spreads N trials over S studies: S/2 scenario x optimizer pairs, each a tuning study (a grid
over the learning rate, pruned by the median rule) and a final study (its best over a few seeds). A shipped
suite's subset keeps its first pairs in the suite's own order, so a claim walks over as many studies as there;
past the suite's size its scenarios are repeated under new names.
Either way heartbeats are short, so a killed worker's trial is requeued within seconds.
"""

from __future__ import annotations

import dataclasses

from optbench import optim
from optbench.bench.protocol import freeze
from optbench.bench.suite import Execution, Final, OptimizerEntry, Scenario, Suite, Tuning, load_suite, validate
from optbench.errors import UserError

OPTIMIZERS = ("adamw", "lion", "nadam", "radam", "lamb", "adan", "sgd", "muon", "soap", "adafactor")
"""The synthetic suite's optimizers (a pair's loss depends on its optimizer's name, not its maths)."""
GRACE_S = 30
"""A trial silent this long belongs to a dead worker (suites default to 60 s). Heartbeats beat every second, but a
live trial's must never look this old: SQLite dates them to the second, and with 32 workers on SQLite a heartbeat
waits for the database behind the claims."""


def short_heartbeats(grace_s: int) -> Execution:
    return Execution(heartbeat_s=1, grace_s=grace_s, max_retries=3)


def synthetic(trials: int, studies: int, prune: bool = True, grace_s: int = GRACE_S) -> Suite:
    """About `trials` trials over exactly `studies` studies (planned: pairs x (grid points + final seeds))."""
    if studies < 2 or studies % 2:
        raise UserError(f"--studies {studies}: a synthetic suite has a tuning and a final study per pair; valid: an "
                        "even number >= 2")
    pairs = studies // 2
    per_pair = trials // pairs
    if per_pair < 3:
        raise UserError(f"--trials {trials}: {studies} studies need at least {3 * pairs} trials (2 grid points and "
                        "a final seed per pair)")
    seeds = max(1, min(3, per_pair // 4))
    grid = per_pair - seeds
    count = max(k for k in range(1, len(OPTIMIZERS) + 1) if pairs % k == 0)
    optimizers = [lr_grid(name, grid) for name in OPTIMIZERS[:count]]
    scenarios = [Scenario(f"s{i}") for i in range(pairs // count)]
    suite = Suite(name=f"scale-{pairs * per_pair}x{studies}", scenarios=scenarios, optimizers=optimizers,
                  tuning=Tuning(method="grid", trials=None, prune=prune), final=Final(seeds=list(range(seeds))),
                  execution=short_heartbeats(grace_s))
    validate(suite)
    return freeze(suite)


def lr_grid(name: str, points: int) -> OptimizerEntry:
    """The optimizer's registry learning-rate range gridded evenly in log space; its other hyperparameters fixed
    at their defaults."""
    space = optim.get(name).search_space
    lr = space["lr"]
    grid = [float(f"{lr.low * (lr.high / lr.low) ** (i / (points - 1)):.6g}") for i in range(points)]
    grid[0], grid[-1] = lr.low, lr.high  # rounding must not leave the range
    search = {key: None for key in space if key != "lr"}
    return OptimizerEntry(name, search={**search, "lr": {"log": [lr.low, lr.high], "grid": grid}})


def shipped_subset(name: str, studies: int, grace_s: int = GRACE_S) -> Suite:
    """The shipped suite's first `studies` / 2 pairs (scenarios in order, then optimizers), frozen. Past the suite's
    own size its scenarios are repeated under new names (`llama-60m~2`, ...): a suite of the same shape, larger, for
    the claim's cost at more studies than the suite has (a claim's work depends on a study's plan, not its model)."""
    suite = repeated(freeze(load_suite(name)), studies)
    pairs = suite.pairs()
    if studies < 2 or studies % 2 or studies > 2 * len(pairs):
        raise UserError(f"--studies {studies}: suite {name} repeated {MAX_REPEATS} times has {len(pairs)} pairs "
                        f"({2 * len(pairs)} studies); valid: even numbers from 2 to {2 * len(pairs)}")
    kept = pairs[:studies // 2]
    runs_in = {entry.name: [s.name for s, e in kept if e.name == entry.name] for entry in suite.optimizers}
    scenarios = [s for s in suite.scenarios if any(s is kept_s for kept_s, _ in kept)]
    optimizers = [dataclasses.replace(e, scenarios=runs_in[e.name] if len(runs_in[e.name]) < len(scenarios) else None)
                  for e in suite.optimizers if runs_in[e.name]]
    subset = dataclasses.replace(suite, name=f"{name}-{studies}", scenarios=scenarios, optimizers=optimizers,
                                 execution=short_heartbeats(grace_s))
    validate(subset)
    return subset


MAX_REPEATS = 8
"""How many copies of a shipped suite's scenarios --suite may plan (s4s-stage1: up to 1,536 studies)."""


def repeated(suite: Suite, studies: int) -> Suite:
    """`suite` with its scenarios repeated (copy k named `NAME~k`, its ladder too) until it has `studies` studies, at
    most MAX_REPEATS times over; the suite itself where it has enough. An optimizer limited to some scenarios runs in
    their copies as well."""
    copies = min(MAX_REPEATS, max(1, -(-studies // (2 * len(suite.pairs())))))
    if copies == 1:
        return suite
    named = lambda base, k: base if k == 1 or base is None else f"{base}~{k}"  # noqa: E731
    scenarios = [dataclasses.replace(s, name=named(s.name, k), ladder=named(s.ladder, k))
                 for k in range(1, copies + 1) for s in suite.scenarios]
    optimizers = [e if e.scenarios is None else
                  dataclasses.replace(e, scenarios=[named(n, k) for k in range(1, copies + 1) for n in e.scenarios])
                  for e in suite.optimizers]
    return dataclasses.replace(suite, scenarios=scenarios, optimizers=optimizers)
