"""`optbench.train` is the library's entry point and nothing else: the training subpackage has a name of its own,
so importing it by its dotted path works (it did not while both were called `train`)."""

from __future__ import annotations

import importlib
import subprocess
import sys

from tests.bench.proctree import child_env


def test_the_entry_point_and_the_training_package_do_not_collide():
    code = ("import optbench.training.trainer as trainer, optbench; "
            "assert callable(optbench.train) and trainer.Trainer.__module__ == 'optbench.training.trainer'")
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env())  # a fresh process: no earlier import
    assert importlib.import_module("optbench").train is importlib.import_module("optbench.training").train
