"""`optbench.train` is the library's entry point and nothing else: the training subpackage has a name of its own,
so importing it by its dotted path works (it did not while both were called `train`: `import a.b.c as m` reads
attribute `b` of `a`, which was the function)."""

from __future__ import annotations

import importlib


def test_the_entry_point_and_the_training_package_do_not_collide():
    import optbench
    import optbench.training.trainer as trainer

    assert callable(optbench.train) and trainer.Trainer.__module__ == "optbench.training.trainer"
    assert optbench.train is importlib.import_module("optbench.training").train
