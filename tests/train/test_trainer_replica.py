"""The trainer against a training loop written out here from the documented rules, step by step.

A bug in the loop biases every optimizer's number at once, so each load-bearing behaviour is restated in
this file independently of optbench's code, and the real Trainer must agree with it on every logged loss,
gradient norm, the final weights and their average:

- data order: micro-batch `m` of step `s` is the windows starting at default_rng([data_seed, s, m]) offsets;
- gradient accumulation: each micro-batch's loss is divided by their number; the logged loss is their mean;
- clipping: the total gradient norm is scaled down to train.grad_clip; the logged norm and largest entry are
  the gradient's before clipping (a spike must show in full, not damped by the clip);
- the schedule: linear warmup (s + 1) / (W + 1), then cosine to final_lr_frac, applied to each group;
- weight decay: matrices decay, norm gains and biases never do, embeddings as optim.decay_embeddings says;
- EMA: the first update copies the weights, later ones blend with the decay.

The only things taken from optbench are the initial weights and the prepared token file (model building and
data preparation have tests of their own).
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optbench.config.compose import compose
from optbench.training.checkpoint import CheckpointStore
from optbench.training.rundir import read_metrics
from optbench.training.trainer import Trainer

STEPS, WARMUP, FINAL_FRAC = 12, 3, 0.1
BATCH, SEQ = 4, 32


def lr_at(step: int) -> float:
    """optbench's documented cosine schedule, as a formula."""
    if step < WARMUP:
        return (step + 1) / (WARMUP + 1)
    progress = (step - WARMUP) / (STEPS - 1 - WARMUP)
    return FINAL_FRAC + (1 - FINAL_FRAC) * 0.5 * (1 + math.cos(math.pi * progress))


def micro_batch(tokens: np.ndarray, data_seed: int, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    starts = np.random.default_rng([data_seed, step, micro]).integers(0, len(tokens) - SEQ, size=BATCH)
    rows = torch.from_numpy(np.stack([tokens[s:s + SEQ + 1] for s in starts]).astype(np.int64))
    return rows[:, :-1], rows[:, 1:]


def gpt2_groups(model: torch.nn.Module, weight_decay: float, decay_embeddings: bool) -> list[dict]:
    """GPT-2's parameters by name: the two embedding tables (the head is tied to wte), vectors, matrices."""
    embeddings, vectors, matrices = [], [], []
    for name, p in model.named_parameters():
        if name in ("transformer.wte.weight", "transformer.wpe.weight"):
            embeddings.append(p)
        elif p.dim() < 2:
            vectors.append(p)
        else:
            matrices.append(p)
    assert embeddings and vectors and matrices
    return [{"params": matrices, "weight_decay": weight_decay},
            {"params": embeddings, "weight_decay": weight_decay if decay_embeddings else 0.0},
            {"params": vectors, "weight_decay": 0.0}]


CASES = {
    # AdamW ignores a constant gradient scale, but not clipping that binds by a different factor each step;
    # decay 0.5 at lr 1e-2 moves a decayed weight ~5e-3 in 12 steps, far above the comparison's tolerance.
    "adamw-clip-decay-ema": dict(
        overrides=["optim=adamw", "optim.lr=1e-2", "optim.weight_decay=0.5", "optim.decay_embeddings=false",
                   "train.grad_clip=0.3", "train.grad_accum=2", "train.weight_avg=ema",
                   "train.weight_avg_decay=0.8", "train.data_seed=7"],
        optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=True),
        decay=0.5, decay_embeddings=False, clip=0.3, accum=2, ema=0.8, data_seed=7),
    # Plain SGD is linear in the gradient: a micro-batch loss not divided by the accumulation count, or a
    # gradient norm not clipped, changes every update.
    "sgd-accum-clip": dict(
        overrides=["optim=sgd", "optim.lr=0.3", "optim.momentum=0.9", "optim.nesterov=true",
                   "optim.weight_decay=0.05", "train.grad_clip=2.0", "train.grad_accum=3"],
        optimizer=lambda groups: torch.optim.SGD(groups, lr=0.3, momentum=0.9, nesterov=True),
        decay=0.05, decay_embeddings=True, clip=2.0, accum=3, ema=None, data_seed=1337),  # the default seed
}


def replay(case: dict, initial: dict, tokens: np.ndarray, model: torch.nn.Module):
    """The loop itself: per-step (loss, grad norm, largest |grad|), the final weights and the EMA of the weights."""
    model.load_state_dict(initial)
    groups = gpt2_groups(model, case["decay"], case["decay_embeddings"])
    opt = case["optimizer"](groups)
    base = [g["lr"] for g in opt.param_groups]
    ema, logged = None, []
    for step in range(STEPS):
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * lr_at(step)
        loss = 0.0
        for micro in range(case["accum"]):
            x, y = micro_batch(tokens, case["data_seed"], step, micro)
            ce = F.cross_entropy(model(x).float().flatten(0, 1), y.flatten()) / case["accum"]
            ce.backward()
            loss += ce.item()
        grads = [p.grad for p in model.parameters()]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        largest = max(g.abs().max().item() for g in grads)
        if norm > case["clip"]:
            for g in grads:
                g.mul_(case["clip"] / (norm + 1e-6))  # torch's clip_grad_norm_ coefficient
        logged.append((loss, norm.item(), largest))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if case["ema"] is not None:
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            ema = weights if ema is None else {k: case["ema"] * ema[k] + (1 - case["ema"]) * weights[k] for k in ema}
    return logged, model.state_dict(), ema


@pytest.mark.parametrize("name", list(CASES))
def test_the_trainer_computes_what_the_written_out_loop_computes(name, tmp_path, tiny_overrides):
    case = CASES[name]
    cfg = compose([*tiny_overrides, *case["overrides"], f"train.steps={STEPS}", f"train.batch_size={BATCH}",
                   f"train.seq_len={SEQ}", f"schedule.warmup_steps={WARMUP}", f"schedule.final_lr_frac={FINAL_FRAC}",
                   "schedule=cosine", "train.threads=1", "run.log_every=1", "eval.every=0", "eval.sample_tokens=0"])
    trainer = Trainer(cfg)
    initial = copy.deepcopy(trainer.model.state_dict())
    tokens = np.asarray(trainer.data.tokens("train"))
    model = copy.deepcopy(trainer.model)
    assert trainer.train()["status"] == "completed"

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the trainer's reductions ran on one thread; so do these
    try:
        logged, weights, ema = replay(case, initial, tokens, model)
    finally:
        torch.set_num_threads(previous)

    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    clipped = sum(norm > case["clip"] for _, norm, _ in logged)
    assert 0 < clipped, "the case must make clipping bind"
    for r, (loss, norm, largest) in zip(records, logged):
        # Same ops in the same order: agreement to float32 rounding of the summed micro-batch losses.
        assert r["loss"] == pytest.approx(loss, rel=1e-6), f"step {r['step']} loss"
        assert r["grad_norm"] == pytest.approx(norm, rel=1e-5), f"step {r['step']} grad norm (before clipping)"
        assert r["grad_max"] == pytest.approx(largest, rel=1e-6), f"step {r['step']} largest |grad| (before clipping)"
        assert r["lr"] == pytest.approx(case["optimizer"]([torch.zeros(1)]).defaults["lr"] * lr_at(r["step"] - 1))

    ckpt = CheckpointStore(tmp_path / "run" / "checkpoints").latest()[1]
    for key, value in weights.items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}: {m}")
    if ema is not None:
        averaged = {k.removeprefix("module."): v for k, v in ckpt["extra"]["averaged_model"].items()}
        for key, value in ema.items():
            torch.testing.assert_close(averaged[key], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"EMA {key}: {m}")


def test_the_schedule_scales_each_groups_own_learning_rate(tmp_path, tiny_overrides):
    """Muon's matrices and its AdamW backup's parameters have different base learning rates: each follows the
    schedule from its own."""
    cfg = compose([*tiny_overrides, "optim=muon", "optim.lr=0.02", "optim.backup.lr=3e-3", f"train.steps={STEPS}",
                   f"schedule.warmup_steps={WARMUP}", f"schedule.final_lr_frac={FINAL_FRAC}", "schedule=cosine"])
    trainer = Trainer(cfg)
    base = [group["lr"] for group in trainer.optimizer.param_groups]
    assert {0.02, 3e-3} <= set(base)
    for step in (0, WARMUP, STEPS - 1):
        trainer.train_step(step)
        assert [group["lr"] for group in trainer.optimizer.param_groups] == pytest.approx(
            [lr * lr_at(step) for lr in base], rel=1e-12)
        trainer.optimizer.zero_grad(set_to_none=True)
