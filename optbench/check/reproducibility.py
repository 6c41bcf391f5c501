"""Runs that must agree bit for bit: one resumed from saved state with one that never stopped, and two runs from
the same seed."""

from __future__ import annotations

from optbench.check import lm
from optbench.check.loop import differing, snapshot, start, train
from optbench.check.result import Outcome, verdict
from optbench.check.state import through_disk
from optbench.check.subject import Subject
from optbench.training.rng import rng_state, set_rng_state

STEPS, SPLIT = 20, 10
SEED_STEPS = 5


def resume(subject: Subject) -> Outcome:
    """Train STEPS steps; and train SPLIT, save model and optimizer state and torch's stream (as a checkpoint
    does), load them into a model of another init and a fresh optimizer, finish. The state is copied with
    weights_only=False: whether it loads safely is the round-trip check's question, so one fault is reported once."""
    task = lm.task(lm.batches(STEPS))
    run = start(subject, lm.tiny_lm(), STEPS)
    train(run, task, range(SPLIT))
    saved_model = through_disk(run.model.state_dict(), weights_only=False)
    saved_optimizer = through_disk(run.optimizer.state_dict(), weights_only=False)
    saved_rng = rng_state()
    train(run, task, range(SPLIT, STEPS))

    model = lm.tiny_lm(seed=1)  # another init: everything must come from the saved state
    model.load_state_dict(saved_model)
    resumed = start(subject, model, STEPS, state=saved_optimizer)
    set_rng_state(saved_rng)
    train(resumed, task, range(SPLIT, STEPS))
    return _agreement(snapshot(run.model), snapshot(resumed.model),
                      f"bit-identical after resuming at step {SPLIT} of {STEPS}", split=SPLIT, steps=STEPS)


def same_seed(subject: Subject) -> Outcome:
    task = lm.task(lm.batches(SEED_STEPS))
    finals = []
    for _ in range(2):
        run = start(subject, lm.tiny_lm(), SEED_STEPS)
        train(run, task, range(SEED_STEPS))
        finals.append(snapshot(run.model))
    return _agreement(*finals, f"two runs of {SEED_STEPS} steps bit-identical", steps=SEED_STEPS)


def _agreement(a: dict, b: dict, value: str, **measured) -> Outcome:
    differ = differing(a, b)
    if not differ:
        return verdict(True, value, **measured)
    worst = max(differ, key=lambda name: (a[name].float() - b[name].float()).abs().max().item())
    gap = (a[worst].float() - b[worst].float()).abs().max().item()
    return verdict(False, f"{len(differ)} of {len(a)} parameters differ", f"most: {worst} (max |diff| {gap:.2e})",
                   differing=differ, **measured)
