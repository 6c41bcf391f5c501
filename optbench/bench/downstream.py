"""A suite's downstream set: lm-eval tasks every final run is evaluated on once it completes (`optbench eval`).

    downstream: {tasks: [hellaswag, arc_easy], num_fewshot: 0, limit: null, batch_size: null, tasks_dir: null}

Only final runs are evaluated: tuning compares optimizers on validation loss, and the leaderboard's downstream
columns (report/downstream.py) are means over the final seeds. The worker evaluates a completed final run before
telling its study, so a worker killed while evaluating leaves the trial to be requeued and evaluated again; a run
that already has its downstream.json is not evaluated twice (a final run at the tuning seed reuses the tuning
trial's run directory). A failing evaluation does not fail the trial: its training result stands, the trial
records the error and the report shows no downstream numbers for that run.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path

from optbench.errors import UserError, check


@dataclass
class Downstream:
    tasks: list[str] = field(default_factory=list)
    """lm-eval task (or group) names; empty: no downstream evaluation."""
    num_fewshot: int | None = None
    """None: each task's own default."""
    limit: int | None = None
    """At most this many examples per task; None: all of them."""
    batch_size: int | None = None
    """None: the run's eval.batch_size, else its train.batch_size."""
    tasks_dir: str | None = None
    """A folder of task YAMLs (local data files), searched besides lm-eval's own tasks."""


def validate(spec: Downstream) -> None:
    """The settings' own checks (task names need lm-eval: `check_tasks`)."""
    for key in ("limit", "batch_size"):
        value = getattr(spec, key)
        check(value is None or value > 0, f"downstream.{key}={value} must be positive (or null)")
    check(spec.num_fewshot is None or spec.num_fewshot >= 0,
          f"downstream.num_fewshot={spec.num_fewshot} must be >= 0 (or null: each task's default)")
    check(spec.tasks_dir is None or Path(spec.tasks_dir).is_dir(),
          f"downstream.tasks_dir={spec.tasks_dir} is not a folder")


def check_tasks(spec: Downstream) -> None:
    """Every task name exists (lm-eval installed, the `eval` extra): checked before a bench or its smoke test runs."""
    if spec.tasks:
        from optbench.downstream.tasks import check_names, require_lm_eval

        require_lm_eval("the suite's downstream tasks")
        check_names(spec.tasks, spec.tasks_dir, "downstream.tasks")


def evaluate_final(spec: Downstream, run: Path) -> str | None:
    """Evaluate a completed final run's checkpoint on the tasks, unless it has been; the error text if it failed."""
    from optbench.downstream import RESULT_FILE, EvalRequest, evaluate_run
    from optbench.training.sample import RunRef

    if not spec.tasks or (run / RESULT_FILE).exists():
        return None
    request = EvalRequest(RunRef(str(run)), ",".join(spec.tasks), spec.limit, spec.batch_size, spec.num_fewshot,
                          tasks_dir=spec.tasks_dir)
    try:
        evaluate_run(request, key="downstream.tasks")
    except Exception as err:  # a dataset missing offline, a task the model's vocabulary cannot spell, ...
        if not isinstance(err, UserError):
            traceback.print_exc()
        return f"{type(err).__name__}: {err}"[:500]
    return None
