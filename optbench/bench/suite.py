"""A benchmark suite: scenarios x optimizers, each optimizer tuned over its own hyperparameters only.

    name: tiny
    base: [data=shakespeare-char, train.steps=300]             # every run of every scenario
    scenarios:
      - {name: char-300, overrides: {model.n_layer: 2}, target_loss: 2.2}
    optimizers:
      - name: adamw                                             # registry search space
      - name: muon
        fixed: {momentum: 0.95}                                 # kept at this value, not tuned
        search: {lr: {log: [0.003, 0.1], grid: [0.01, 0.02]}}   # replaces the registry's range for lr
    tuning: {method: grid | tpe | coordinate, trials: 8, seed: 0, prune: false, extend: 3, studies: 1}
    final: {seeds: [0, 1, 2]}
    downstream: {tasks: [hellaswag, arc_easy], num_fewshot: 0}  # lm-eval tasks on each final run (optional)

The controlled-variable protocol (Scaling-for-Scaling, the EPFL benchmark) is enforced here: a
scenario fixes everything but the optimizer; `fixed`/`search` may only name the optimizer's own
hyperparameters; seeds come from `tuning.seed` / `final.seeds`, never from overrides.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from optbench import plugins
from optbench.bench.downstream import Downstream, validate as validate_downstream
from optbench.errors import UserError, check, check_choice, closest
from optbench.optim.search_space import Choice, Dimension, LogUniform, SearchSpace, Uniform

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
METHODS = ("grid", "tpe", "coordinate")
RESERVED_KEYS = ("train.seed", "train.data_seed", "run.dir", "run.resume", "run.ckpt_every")
"""Set by the bench for every run (seeds from tuning.seed and final.seeds, the run layout, checkpointing
from execution.ckpt_every); a suite that set them would break seeding or resumption."""


@dataclass
class Scenario:
    """One training setting (model x data x tokens x batch x context x schedule)."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted config keys (or group choices such as model: llama) on top of the suite's base."""
    target_loss: float | None = None
    """Validation loss the report measures steps and wall-clock to."""
    ladder: str | None = None
    """Scenarios sharing a ladder name differ only in token budget; AdamW's final losses over them give
    the power law that converts a loss into AdamW-equivalent tokens (the speedup column)."""


@dataclass
class OptimizerEntry:
    name: str
    fixed: dict[str, Any] = field(default_factory=dict)
    """The optimizer's own hyperparameters held at a value (not tuned); a matrix optimizer's backup by
    dotted name (backup.lr)."""
    search: dict[str, Any] | None = None
    """Ranges replacing the registry's for the named keys: {log: [lo, hi]}, {uniform: [lo, hi]},
    {choice: [...]}, each with an optional grid: [...]; a key mapped to null is not tuned."""
    trials: int | None = None
    """This optimizer's tuning budget; None: tuning.trials."""
    space: dict[str, Any] | None = None
    """The whole search space (the registry's ranges with `search` applied, grids written out) and
    `defaults`, every hyperparameter's default, as the bench resolved them when it started: set in OUT/suite.yaml,
    the frozen protocol that planning, the workers and the report read whatever the registry says later
    (protocol.py). Left out of a suite file."""
    defaults: dict[str, Any] | None = None
    scenarios: list[str] | None = None
    """The scenarios this optimizer runs in; None: every one. For a method whose paper runs it in a setting of
    its own (Schedule-Free AdamW without a schedule, muLO on a muP model), so the other optimizers are not
    made to run there and it is not made to run elsewhere."""


@dataclass
class Tuning:
    method: str = "coordinate"
    """grid (every point, as a paper's grid) | tpe (Optuna's TPE) | coordinate (Marin's protocol: one
    hyperparameter at a time over its grid from the registry defaults, until no move improves)."""
    trials: int | None = 16
    """Trials per optimizer and scenario; None: no limit (grid: the whole grid; coordinate: until converged)."""
    seed: int = 0
    """The seed of every tuning run (model init and data order)."""
    sampler_seed: int = 0
    """Seeds TPE's proposals."""
    prune: bool = False
    """Stop trials whose intermediate val loss is worse than the median of earlier trials at that step."""
    prune_warmup_evals: int = 2
    """Evaluations each trial gets before it may be pruned."""
    studies: int = 1
    """Independent tuning studies per optimizer and scenario (AlgoPerf's repeated studies): study k tunes at
    seed tuning.seed + k, TPE sampling with its own seed. The final seeds repeat study 0's best; the report gives
    the median over studies of each study's best tuning loss, with its spread."""
    extend: int = 3
    """Steps each tuned hyperparameter may take beyond its grid when its best value sits on an edge (extend.py),
    on top of the trial budget; 0: never (the report then stars such values)."""


@dataclass
class Final:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of each optimizer's best configuration (a seed equal to tuning.seed reuses that trial's run)."""


@dataclass
class Slurm:
    """submitit's Slurm parameters for an array of workers (`optbench bench SUITE --slurm`)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 240
    gpus_per_task: int = 1
    """GPUs of each trial rank: an array task (one worker) asks for gpus_per_task x execution.nproc_per_trial."""
    cpus_per_task: int = 8
    mem_gb: int = 64
    array_parallelism: int = 8
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other submitit `slurm_*` parameter, without the prefix (e.g. constraint: a100)."""


@dataclass
class Execution:
    workers: int = 1
    """Trial workers run in parallel (processes locally, array tasks on Slurm)."""
    threads_per_worker: int | None = None
    """CPU threads of each local worker; None: the machine's cores divided among the workers."""
    gpus: list[int] = field(default_factory=list)
    """GPUs the local workers are pinned to in turn (through CUDA_VISIBLE_DEVICES), nproc_per_trial at a time; empty:
    no pinning."""
    nproc_per_trial: int = 1
    """Ranks of each trial: above 1, a worker runs its trial under torchrun (bench/multirank.py), one GPU per rank on
    GPU, gloo processes sharing the worker's threads on CPU, with the suite's train.parallel (ddp or fsdp)."""
    ckpt_every: int = 100
    """Trials checkpoint this often, so a trial whose worker died resumes instead of restarting."""
    heartbeat_s: int = 10
    """How often a running trial tells the study it is alive."""
    grace_s: int = 60
    """A running trial silent this long belongs to a dead worker: it is failed and retried."""
    max_retries: int = 3
    slurm: Slurm = field(default_factory=Slurm)


@dataclass
class Suite:
    name: str
    description: str = ""
    baseline: str = "adamw"
    """The optimizer every speedup, overhead and significance test is measured against."""
    base: list[str] = field(default_factory=list)
    """Overrides common to every run of the suite (Hydra syntax)."""
    scenarios: list[Scenario] = field(default_factory=list)
    optimizers: list[OptimizerEntry] = field(default_factory=list)
    tuning: Tuning = field(default_factory=Tuning)
    final: Final = field(default_factory=Final)
    execution: Execution = field(default_factory=Execution)
    downstream: Downstream = field(default_factory=Downstream)
    """lm-eval tasks each completed final run is evaluated on (bench/downstream.py); none by default."""
    plugins: list[str] = field(default_factory=list)
    """Plugin files (relative to the suite file) or modules that register what the suite runs (optbench/plugins.py),
    loaded before the suite is checked; OUT/suite.yaml also lists those the bench had from --plugin and elsewhere."""
    plugin_hashes: dict[str, str] = field(default_factory=dict)
    """Each plugin file's SHA-256 as the suite ran (written by the bench): a worker or a rerun into the same OUT
    meeting an edited plugin is refused rather than mixing two versions' results."""

    def scenario(self, name: str) -> Scenario:
        return next(s for s in self.scenarios if s.name == name)

    def runs_in(self, entry: OptimizerEntry, scenario: Scenario) -> bool:
        return entry.scenarios is None or scenario.name in entry.scenarios

    def pairs(self) -> list[tuple[Scenario, OptimizerEntry]]:
        """Every (scenario, optimizer) the suite runs, scenarios in order, then optimizers."""
        return [(s, o) for s in self.scenarios for o in self.optimizers if self.runs_in(o, s)]

    def optimizer(self, name: str) -> OptimizerEntry:
        return next(o for o in self.optimizers if o.name == name)


# ----------------------------------------------------------------------------- loading


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def resolve_path(name_or_path: str) -> Path:
    """A shipped suite's name (tiny, small, ...) or a path to a suite YAML."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        check(path.is_file(), f"suite file {name_or_path} does not exist")
        return path
    shipped = SUITES_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise UserError(f"unknown suite '{name_or_path}'; valid: {', '.join(closest(name_or_path, suite_names()))} "
                        "or a path to a .yaml file")
    return shipped


def load_suite(name_or_path: str | Path) -> Suite:
    """Read, type-check and validate a suite (every optimizer, key and override checked before any run)."""
    path = resolve_path(str(name_or_path))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Suite), OmegaConf.load(path))
        suite: Suite = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        first = str(err).splitlines()[0]
        raise UserError(f"suite {path}: {f'{key}: ' if key else ''}{first}") from None
    suite.plugins, suite.plugin_hashes = plugins.load_pinned(suite.plugins, suite.plugin_hashes, path)
    validate(suite)
    return suite


def validate(suite: Suite) -> None:
    from optbench import optim

    check_choice("tuning.method", suite.tuning.method, METHODS)
    check(bool(suite.scenarios), f"suite {suite.name} has no scenarios")
    check(bool(suite.optimizers), f"suite {suite.name} has no optimizers")
    check(suite.tuning.trials is None or suite.tuning.trials > 0, "tuning.trials must be positive or null")
    check(suite.tuning.extend >= 0, f"tuning.extend={suite.tuning.extend} must be >= 0")
    check(suite.tuning.studies >= 1, f"tuning.studies={suite.tuning.studies} must be >= 1")
    check(bool(suite.final.seeds), "final.seeds must name at least one seed")
    check(suite.execution.workers > 0, f"execution.workers={suite.execution.workers} must be positive")
    _validate_nproc(suite)
    validate_downstream(suite.downstream)
    check(suite.tuning.method != "tpe" or suite.tuning.trials is not None or all(o.trials for o in suite.optimizers),
          "tuning.method=tpe needs a trial budget (tuning.trials); it has no natural end")
    check(0 < suite.execution.heartbeat_s < suite.execution.grace_s,
          "execution.heartbeat_s must be positive and below execution.grace_s")
    _unique("scenario", [s.name for s in suite.scenarios])
    _unique("optimizer", [o.name for o in suite.optimizers])
    for scenario in suite.scenarios:
        for key in scenario.overrides:
            _check_not_reserved(f"scenarios.{scenario.name}.overrides", key)
            check(not key.startswith("optim"), f"scenario {scenario.name} sets {key}: a scenario fixes everything "
                  "but the optimizer, so optimizer settings belong under optimizers[].fixed")
    for line in suite.base:
        key = line.split("=", 1)[0].lstrip("+~")
        _check_not_reserved("base", key)
        check(not key.startswith("optim"), f"base sets {key}: optimizer settings belong under optimizers[].fixed")
    names = optim.names()
    for entry in suite.optimizers:
        check_choice("optimizer", entry.name, names)
        own = hyperparameters(entry_config(entry))
        for key in list(entry.fixed) + list(entry.search or {}):
            if key not in own:
                raise UserError(f"optimizer {entry.name} has no hyperparameter '{key}'; valid: "
                                f"{', '.join(closest(key, own))}")
        space = search_space(entry)
        check(bool(space), f"optimizer {entry.name} has nothing to tune; give it a search range")
        check(not set(space) & set(entry.fixed),
              f"optimizer {entry.name} both fixes and tunes {sorted(set(space) & set(entry.fixed))}")
        check(entry.trials is None or entry.trials > 0, f"optimizers.{entry.name}.trials must be positive")
        for name in entry.scenarios or ():
            check_choice(f"optimizers.{entry.name}.scenarios", name, [s.name for s in suite.scenarios])
        check(entry.scenarios is None or bool(entry.scenarios), f"optimizers.{entry.name}.scenarios is empty")
    if suite.execution.slurm.extra:  # a typo here would otherwise surface as submitit's NameError at --slurm
        from submitit.slurm.slurm import SlurmExecutor

        known = SlurmExecutor._valid_parameters()
        for key in suite.execution.slurm.extra:
            if key not in known:
                raise UserError(f"execution.slurm.extra.{key} is not a Slurm parameter of submitit; valid: "
                                f"{', '.join(closest(key, known))}")
    check(suite.baseline in [o.name for o in suite.optimizers],
          f"baseline '{suite.baseline}' is not among the suite's optimizers; valid: "
          f"{', '.join(o.name for o in suite.optimizers)}")
    check(suite.optimizer(suite.baseline).scenarios is None,
          f"the baseline {suite.baseline} must run in every scenario (every ratio and speedup is against it); "
          f"remove optimizers.{suite.baseline}.scenarios")


def _validate_nproc(suite: Suite) -> None:
    """execution.nproc_per_trial on its own; each run's config is checked against it once composed (launch.py)."""
    nproc, gpus = suite.execution.nproc_per_trial, suite.execution.gpus
    check(nproc >= 1, f"execution.nproc_per_trial={nproc} must be at least 1")
    if nproc > 1:
        check(not suite.tuning.prune, f"tuning.prune reads a trial's evaluations in its worker, which a trial on "
              f"execution.nproc_per_trial={nproc} ranks runs in torchrun's processes; valid with it: "
              "tuning.prune: false")
        check(not gpus or len(set(gpus)) >= nproc, f"execution.gpus={list(gpus)} has fewer GPUs than the "
              f"{nproc} ranks of a trial (execution.nproc_per_trial); list at least {nproc}, or none")


def _unique(what: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    check(not repeated, f"{what} names repeated in the suite: {', '.join(repeated)}")


def _check_not_reserved(where: str, key: str) -> None:
    if key in RESERVED_KEYS:
        raise UserError(f"{where} sets {key}, which the bench sets for every run (seeds come from tuning.seed "
                        "and final.seeds, checkpoints from execution.ckpt_every); remove it")


# ----------------------------------------------------------------------------- search spaces


def is_frozen(entry: OptimizerEntry) -> bool:
    """Whether the entry is the resolved protocol written into OUT/suite.yaml (see protocol.py)."""
    return entry.space is not None and entry.defaults is not None


def search_space(entry: OptimizerEntry) -> SearchSpace:
    """The registry's ranges with the suite's replacements; keys held fixed are not searched. A frozen entry
    (OUT/suite.yaml) is its own search space: the registry is not read."""
    from optbench import optim

    if is_frozen(entry):
        return {key: parse_dimension(f"optimizers.{entry.name}.space.{key}", spec) for key, spec in entry.space.items()}
    space: SearchSpace = {k: v for k, v in optim.get(entry.name).search_space.items() if k not in entry.fixed}
    for key, spec in (entry.search or {}).items():
        if spec is None:
            space.pop(key, None)
        else:
            space[key] = parse_dimension(f"optimizers.{entry.name}.search.{key}", spec)
    return space


def parse_dimension(where: str, spec: Any) -> Dimension:
    """{log: [lo, hi]} | {uniform: [lo, hi]} | {choice: [...]}, each with an optional grid: [...]."""
    kinds = ("log", "uniform", "choice")
    if not isinstance(spec, dict) or len(set(spec) & set(kinds)) != 1 or set(spec) - {*kinds, "grid"}:
        raise UserError(f"{where}={spec!r} must be one of {{log: [lo, hi]}}, {{uniform: [lo, hi]}}, "
                        "{choice: [...]}, with an optional grid: [...]")
    grid = tuple(spec.get("grid") or ())
    if "choice" in spec:
        check(bool(spec["choice"]), f"{where}.choice is empty")
        return Choice(tuple(spec["choice"]))
    kind = "log" if "log" in spec else "uniform"
    bounds = spec[kind]
    check(isinstance(bounds, list | tuple) and len(bounds) == 2 and bounds[0] < bounds[1],
          f"{where}.{kind}={bounds!r} must be [low, high] with low < high")
    low, high = float(bounds[0]), float(bounds[1])
    check(kind == "uniform" or low > 0, f"{where}.log={bounds!r} must be positive")
    outside = [g for g in grid if not low <= g <= high]
    check(not outside, f"{where}.grid has {outside} outside [{low}, {high}]")
    return (LogUniform if kind == "log" else Uniform)(low, high, tuple(float(g) for g in grid))


def hyperparameters(config: Any, prefix: str = "") -> dict[str, Any]:
    """An optimizer config's hyperparameters by dotted name (a matrix optimizer's AdamW backup as
    backup.lr, backup.beta2, ...) with their default values."""
    found: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "name":
            continue
        if dataclasses.is_dataclass(value):
            found.update(hyperparameters(value, f"{prefix}{f.name}."))
        elif isinstance(value, dict):  # optim=torch's kwargs: each keyword of its class, as kwargs.momentum
            found.update({f"{prefix}{f.name}.{key}": v for key, v in value.items()})
        else:
            found[f"{prefix}{f.name}"] = value
    return found


def defaults(entry: OptimizerEntry) -> dict[str, Any]:
    """The optimizer's defaults (frozen, or the registry's) with the suite's fixed values: where coordinate
    descent starts."""
    base = entry.defaults if is_frozen(entry) else hyperparameters(entry_config(entry))
    return {**base, **entry.fixed}


def entry_config(entry: OptimizerEntry) -> Any:
    """The optimizer's config with the entry's fixed top-level values: they may decide which hyperparameters exist
    (optim=torch's target, whose constructor's keywords are its kwargs.*)."""
    from optbench import optim

    own = {f.name for f in dataclasses.fields(optim.get(entry.name).config_cls)}
    return optim.make_config(entry.name, **{k: v for k, v in entry.fixed.items() if k in own and k != "name"})


# ----------------------------------------------------------------------------- runs


def run_overrides(suite: Suite, scenario: Scenario, entry: OptimizerEntry, hparams: dict[str, Any],
                  seed: int) -> list[str]:
    """The `optbench train` overrides of one run: base, scenario, optimizer (fixed, then tuned), seed."""
    overrides = [*suite.base, f"optim={entry.name}"]
    overrides += [f"{k}={_format(v)}" for k, v in scenario.overrides.items()]
    overrides += [f"optim.{k}={_format(v)}" for k, v in {**entry.fixed, **hparams}.items()]
    overrides += [f"train.seed={seed}", f"train.data_seed={seed}"]
    return overrides


def _format(value: Any) -> str:
    """A Python value as Hydra override syntax (lists in brackets, None as null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def run_key(hparams: dict[str, Any], seed: int) -> str:
    """A run directory's name: the same hyperparameters and seed always land in the same directory, so a
    retried trial resumes the dead one's checkpoint and a final run at the tuning seed reuses the trial."""
    digest = hashlib.sha256(json.dumps(hparams, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"seed{seed}-{digest}"


def to_yaml(suite: Suite) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(suite))
