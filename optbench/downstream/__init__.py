"""Downstream evaluation through lm-evaluation-harness (the optional `eval` extra): adapter.py puts a run's model
behind lm-eval's LM interface, tasks.py finds task names, run.py evaluates a run and writes downstream.json.

Importing this package does not import lm-eval; a missing extra is one line when evaluation is asked for.
"""

from optbench.downstream.run import (RESULT_FILE, EvalRequest, after_training, check_before_training, eval_from_cli,
                                     evaluate_run)

__all__ = ["RESULT_FILE", "EvalRequest", "after_training", "check_before_training", "eval_from_cli", "evaluate_run"]
