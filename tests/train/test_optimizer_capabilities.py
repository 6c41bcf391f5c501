"""The trainer's optimizer hooks end to end, with the real Trainer on the tiny corpus: Schedule-Free evaluates
at its average x and goes back to training exactly, Sophia's Hessian pass runs every k steps, and runs
with these optimizers resume from an interrupt to the same result as an uninterrupted run."""

import pytest
import torch
import torch.nn.functional as F

import optbench
from tests.train.resume import assert_interrupted_run_resumes_exactly
from optbench.optim.algorithms.sophia import SophiaG
from optbench.optim.registry import Capabilities
from optbench.training.optimizer_hooks import OptimizerHooks
from optbench.training.checkpoint import CheckpointStore
from optbench.training.rundir import read_metrics
from optbench.training.trainer import Trainer
from tests.optim.harness import lm_batches, tiny_lm

SCHEDULE_FREE = ["optim=sf-adamw", "schedule=constant", "optim.lr=0.01"]
SOPHIA = ["optim=sophiag", "optim.lr=1e-3"]  # B comes from the Hessian pass: 4 x 32 tokens


def test_schedule_free_evaluates_at_the_average_and_returns_exactly(tmp_path, tiny_overrides, monkeypatch):
    real_record, real_evaluate = Trainer._eval_record, Trainer.evaluate
    evals = []

    def evaluate(self, model=None):
        assert not any(group["train_mode"] for group in self.optimizer.param_groups), "evaluated in train mode"
        evals[-1]["x"] = [p.detach().clone() for p in self.params]
        return real_evaluate(self, model)

    def eval_record(self):
        opt = self.optimizer
        y = [p.detach().clone() for p in self.params]
        z = [opt.state[p]["z"].clone() if "z" in opt.state[p] else p.detach().clone() for p in self.params]
        at_y = real_evaluate(self)["val_loss"]  # the loss at the training point, for contrast
        evals.append({"step": self.step, "y": y, "z": z, "loss_at_y": at_y})
        record = real_record(self)
        evals[-1]["record"] = record
        assert all(group["train_mode"] for group in opt.param_groups), "not back in train mode"
        assert all(torch.equal(p, q) for p, q in zip(self.params, y)), "training point not restored exactly"
        return record

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    monkeypatch.setattr(Trainer, "_eval_record", eval_record)
    summary = optbench.train([*tiny_overrides, *SCHEDULE_FREE])
    assert summary["status"] == "completed"

    beta1 = 0.9
    assert [e["step"] for e in evals] == [0, 10, 20, 30]
    for e in evals:
        for x, y, z in zip(e["x"], e["y"], e["z"]):  # y = (1 - beta1) z + beta1 x
            torch.testing.assert_close(x, (y - (1 - beta1) * z) / beta1, rtol=1e-5, atol=1e-6)
    for e in evals[1:]:
        assert e["record"]["val_loss"] != e["loss_at_y"], "x and y coincide: nothing was averaged"
    assert summary["final_val_loss"] == evals[-1]["record"]["val_loss"]
    logged = [r["val_loss"] for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    assert logged == [e["record"]["val_loss"] for e in evals]

    # the checkpoint: model and optimizer in train mode (y, z) and the evaluated weights x beside them
    ckpt = CheckpointStore(tmp_path / "run" / "checkpoints").latest()[1]
    assert all(group["train_mode"] for group in ckpt["optimizer"]["param_groups"])
    for group in ckpt["optimizer"]["param_groups"]:
        for index, name in zip(group["params"], group["names"]):
            y, z = ckpt["model"][name], ckpt["optimizer"]["state"][index]["z"]
            torch.testing.assert_close(ckpt["extra"]["eval_model"][name], y + (1 - 1 / beta1) * (z - y))


def test_sophia_hessian_pass_runs_every_k_steps(tiny_overrides, monkeypatch):
    calls = []
    real_update = SophiaG.update_hessian

    def update_hessian(self, batch_tokens=None):
        state = self.state[self.param_groups[0]["params"][0]]
        calls.append(state["step"])  # optimizer steps taken when the pass comes
        assert all(p.grad is not None for g in self.param_groups for p in g["params"])
        assert batch_tokens == 4 * 32  # train.batch_size * train.seq_len of the tiny run
        real_update(self, batch_tokens)

    monkeypatch.setattr(SophiaG, "update_hessian", update_hessian)
    summary = optbench.train([*tiny_overrides, *SOPHIA, "optim.hessian_every=4"])
    assert summary["status"] == "completed"
    assert calls == [4, 8, 12, 16, 20, 24, 28]


RESUMABLE = {
    "sf-adamw": SCHEDULE_FREE,
    "prodigy": ["optim=prodigy", "optim.weight_decay=0.1"],
    "sophiag": [*SOPHIA, "optim.hessian_every=3"],  # passes at 18 and 21 straddle the interrupt at 20
}


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_interrupt_then_resume_matches_an_uninterrupted_run(name, tmp_path, tiny_overrides, monkeypatch):
    assert_interrupted_run_resumes_exactly(tmp_path, [*tiny_overrides, *RESUMABLE[name]], monkeypatch)


class _RecordsHessianGrads(torch.optim.SGD):
    """Stands in for Sophia: keeps the gradients it is handed at the Hessian pass."""

    hessian_every = 1

    def update_hessian(self, batch_tokens=None):
        self.seen = [p.grad.clone() for p in self.param_groups[0]["params"]]
        self.batch_tokens = batch_tokens


def test_the_hessian_pass_backpropagates_labels_sampled_from_the_models_own_predictions():
    """Sophia-G's estimator (Liu et al. 2023, Alg. 2): the gradient handed to update_hessian is that of the
    cross-entropy against labels drawn from softmax(logits), not the data's labels; training gradients are gone
    before and after."""
    model = tiny_lm()
    x, y = lm_batches(1)[0]
    opt = _RecordsHessianGrads(model.parameters(), lr=0.0)
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()  # a training gradient left behind
    OptimizerHooks(opt, Capabilities(hessian_pass=True)).hessian_pass(lambda: model(x), torch.Generator().manual_seed(3))
    assert all(p.grad is None for p in model.parameters())
    assert opt.batch_tokens == x.numel()

    logits = model(x).flatten(0, 1)
    sampled = torch.multinomial(F.softmax(logits.detach(), dim=-1), 1, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(sampled.view(-1), y.flatten()), "the draw must differ from the data's labels"
    expected = torch.autograd.grad(F.cross_entropy(logits, sampled.view(-1)), list(model.parameters()))
    for seen, want in zip(opt.seen, expected):
        torch.testing.assert_close(seen, want, rtol=1e-6, atol=1e-8)
