"""Optional logging sinks: W&B and TensorBoard get the trainer's records (fakes stand in for the libraries)."""

import sys
import types

import pytest

import optbench
from optbench.errors import UserError


class FakeWandbRun:
    def __init__(self, **kwargs):
        self.init_kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, metrics, step):
        self.logged.append((step, metrics))

    def finish(self):
        self.finished = True


def test_wandb_offline_receives_train_and_eval_records(tmp_path, tiny_overrides, monkeypatch):
    runs = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: runs.append(FakeWandbRun(**kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    optbench.train([*tiny_overrides, "run.wandb=true", "run.wandb_mode=offline", "run.wandb_name=demo"])
    (run,) = runs
    assert run.init_kwargs["mode"] == "offline" and run.init_kwargs["name"] == "demo" and run.finished
    steps_with_loss = [step for step, m in run.logged if "loss" in m]
    assert steps_with_loss == [5, 10, 15, 20, 25, 30]
    assert any("val_loss" in m and isinstance(m["sample"], str) for _, m in run.logged)


def test_missing_optional_library_is_a_clear_error(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(UserError, match=r"pip install 'optbench\[wandb\]'"):
        optbench.train([*tiny_overrides, "run.wandb=true"])
    assert not (tmp_path / "run").exists()
