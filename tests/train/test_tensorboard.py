"""run.tensorboard=true: event files under <run>/tensorboard hold every logged scalar at its step (read back
with TensorBoard's own EventAccumulator) and the eval samples as text. Needs the `tensorboard` extra."""

from __future__ import annotations

import sys
import threading

import pytest

import optbench
from optbench import data
from optbench.config.compose import compose
from optbench.errors import UserError
from optbench.training.rundir import read_metrics

FAST = ["train.steps=10", "run.log_every=2", "eval.every=5", "eval.sample_tokens=8", "run.tensorboard=true"]


def test_event_files_hold_the_logged_scalars_and_samples(tmp_path, tiny_overrides):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data.load(compose(tiny_overrides).data, progress=False)  # reading the corpus starts threads of its own
    threads = set(threading.enumerate())
    optbench.train([*tiny_overrides, *FAST])
    assert set(threading.enumerate()) <= threads, "the event writer's thread outlived the run (writer not closed)"
    run = tmp_path / "run"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    lines = read_metrics(run)
    train = [r for r in lines if "loss" in r]
    evals = [r for r in lines if "val_loss" in r]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/val_loss", "eval/val_ppl",
            "eval/val_acc"} <= scalars
    for tag, records, key in (("train/loss", train, "loss"), ("train/lr", train, "lr"),
                              ("eval/val_loss", evals, "val_loss")):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [r["step"] for r in records], tag
        assert [v for _, v in logged] == pytest.approx([r[key] for r in records], rel=1e-6), tag  # float32 there
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8, 10]
    assert [e.step for e in events.Scalars("eval/val_loss")] == [0, 5, 10]
    assert not any(tag.startswith(("train/step", "eval/step", "train/kind")) for tag in scalars)
    samples = events.Tensors("sample/text_summary")
    assert [e.step for e in samples] == [0, 5, 10]
    assert samples[-1].tensor_proto.string_val[0].decode() == evals[-1]["sample"]


def test_without_tensorboard_installed_it_is_one_clear_error_before_anything_is_written(tmp_path, tiny_overrides,
                                                                                       monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    needs = r"run.tensorboard=true needs tensorboard: pip install 'optbench\[tensorboard\]'"
    with pytest.raises(UserError, match=needs):
        optbench.train([*tiny_overrides, *FAST])
    assert not (tmp_path / "run").exists()
