"""What an update must leave alone: parameters without a gradient, frozen parameters, and every parameter when
the learning rate is 0."""

from __future__ import annotations

from optbench import optim
from optbench.check import lm
from optbench.check.loop import differing, snapshot, start, train
from optbench.check.result import Outcome, verdict
from optbench.check.subject import Subject

STEPS, LOSES_GRAD_AT = 6, 3
LR_ZERO_STEPS = 5


def untouched(subject: Subject) -> Outcome:
    """One matrix frozen (requires_grad=False) before the optimizer is built; one matrix and one vector whose
    gradient is None at every step; one matrix and one vector whose gradient is None from step LOSES_GRAD_AT on,
    after they have state. torch.optim's rule: a parameter whose grad is None is skipped, weight decay included."""
    model = lm.tiny_lm()
    frozen, never, later = _pick(subject, model)
    params = dict(model.named_parameters())
    params[frozen].requires_grad_(False)
    before = snapshot(model)

    def drop_grads(step: int) -> None:
        for name in never + (later if step >= LOSES_GRAD_AT else ()):
            params[name].grad = None

    run = start(subject, model, STEPS)
    task = lm.task(lm.batches(STEPS))
    train(run, task, range(LOSES_GRAD_AT), drop_grads)
    at_loss = snapshot(model)
    train(run, task, range(LOSES_GRAD_AT, STEPS), drop_grads)
    after = snapshot(model)
    moved = [f"{name} (frozen)" for name in differing(_only(before, [frozen]), after)]
    moved += [f"{name} (no gradient)" for name in differing(_only(before, never), after)]
    moved += [f"{name} (no gradient from step {LOSES_GRAD_AT})" for name in differing(_only(at_loss, later), after)]
    watched = {"frozen": [frozen], "no_gradient": list(never), "loses_gradient": list(later),
               "loses_gradient_at": LOSES_GRAD_AT}
    if moved:
        return verdict(False, f"{len(moved)} of 5 watched parameters moved", "; ".join(moved), moved=moved,
                       **watched)
    return verdict(True, f"5 parameters unchanged over {STEPS} steps", f"1 frozen, 2 never with a gradient, 2 "
                   f"without one from step {LOSES_GRAD_AT}", **watched)


def _pick(subject: Subject, model) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """Parameters from the build plan's roles, so that a matrix optimizer's own part and its backup are both
    exercised: (frozen matrix, (matrix, vector) never with a gradient, (matrix, vector) losing it later)."""
    roles = {entry.name: entry.role for entry in optim.plan(subject.cfg, model)}
    matrices = [name for name, role in roles.items() if role == "matrix"]
    vectors = [name for name, role in roles.items() if role == "vector"]
    return matrices[0], (matrices[1], vectors[0]), (matrices[2], vectors[1])


def _only(values: dict, names) -> dict:
    return {name: values[name] for name in names}


def lr_zero(subject: Subject) -> Outcome:
    """Every param group's lr set to 0 after building, as the trainer's schedule sets it (warmup's first step):
    an update that ignores the group's lr, or adds anything not scaled by it, moves a parameter."""
    model = lm.tiny_lm()
    before = snapshot(model)
    run = start(subject, model, LR_ZERO_STEPS)
    for group in run.optimizer.param_groups:
        group["lr"] = 0.0
    train(run, lm.task(lm.batches(LR_ZERO_STEPS)), range(LR_ZERO_STEPS))
    moved = differing(before, snapshot(model))
    if moved:
        return verdict(False, f"{len(moved)} of {len(before)} parameters moved at lr 0",
                       f"e.g. {', '.join(moved[:3])}", moved=moved)
    return verdict(True, f"all {len(before)} parameters unchanged over {LR_ZERO_STEPS} steps")
