"""`optbench check-optimizer`: the conformance checks of any registered or importable optimizer.

    report = check_optimizer("lion", ["optim.lr=3e-4"])        # or "package.module:Class" (optim=torch)
    report.exit_code, report.failures, report.to_dict()

The optimizer is composed and built as `optbench train` builds it (optim=NAME and optim.* overrides; a class
through optim=torch optim.target=...). The checks, each in its own module here: the loss of a tiny LM falls
(learning), the state survives the checkpoint format and its bytes per parameter (state), resume and same-seed
runs are bit-identical (reproducibility), frozen and gradient-less parameters and lr 0 leave parameters alone
(invariants), bf16 parameters (precision), and steps to solve synthetic problems (problems, convergence).
The built-in optimizers run through the same code: tests/check/ and tests/optim/test_conformance.py.
"""

from optbench.check.result import FAIL, INFO, PASS, Outcome, Report, Result
from optbench.check.runner import CHECKS, NAMES, check_optimizer, check_subject
from optbench.check.subject import Subject, from_config, resolve

__all__ = ["CHECKS", "FAIL", "INFO", "NAMES", "PASS", "Outcome", "Report", "Result", "Subject", "check_optimizer",
           "check_subject", "from_config", "resolve"]
