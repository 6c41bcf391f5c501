"""train.compile=true on CPU (TorchInductor, which needs a C++ compiler): the compiled model trains to the
same losses as the eager one within float tolerance, and its checkpoints are the plain model's (no
compile wrapper in the state dict), so a compiled run resumes eagerly and the other way round."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import optbench
from optbench.training.checkpoint import CheckpointStore
from optbench.training.rundir import read_metrics

# A cold TorchInductor cache makes this a 40-60 s test on 2 cores (about 10 s warm): not in the quick loop.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None
                                 and shutil.which("gcc") is None, reason="TorchInductor on CPU needs a C++ compiler")]

FAST = ["model.n_layer=1", "train.steps=4", "schedule.warmup_steps=1", "eval.every=0", "eval.batches=1",
        "eval.sample_tokens=0", "run.log_every=1"]


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches and counters start empty and are emptied again: no compiled code leaks between tests."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def losses(run) -> list[tuple[int, float]]:
    return [(r["step"], r.get("loss", r.get("val_loss"))) for r in read_metrics(run)]


def test_compiled_training_matches_eager(tmp_path, tiny_overrides, fresh_dynamo):
    overrides = [*tiny_overrides, *FAST]
    eager = optbench.train([*overrides, f"run.dir={tmp_path / 'eager'}"])
    assert counters["stats"]["unique_graphs"] == 0  # nothing was compiled for the eager run
    compiled = optbench.train([*overrides, "train.compile=true", f"run.dir={tmp_path / 'compiled'}"])
    assert counters["stats"]["unique_graphs"] >= 2  # the training graph, and the evaluation's no-grad one
    assert counters["inductor"], "TorchInductor did not run"

    assert compiled["status"] == "completed" and compiled["steps"] == 4
    ours, reference = losses(tmp_path / "compiled"), losses(tmp_path / "eager")
    assert [s for s, _ in ours] == [s for s, _ in reference] == [1, 2, 3, 4, 4]
    for (step, a), (_, b) in zip(ours, reference):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), f"step {step}: compiled {a}, eager {b}"
    assert compiled["final_val_loss"] == pytest.approx(eager["final_val_loss"], rel=1e-4)

    saved = CheckpointStore(tmp_path / "compiled" / "checkpoints").latest()[1]["model"]
    plain = CheckpointStore(tmp_path / "eager" / "checkpoints").latest()[1]["model"]
    assert saved.keys() == plain.keys() and not any("_orig_mod" in k for k in saved)
