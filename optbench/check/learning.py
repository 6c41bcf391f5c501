"""Does it learn: the tiny LM's loss falls at the optimizer's own hyperparameters."""

from __future__ import annotations

import math
import statistics

from optbench.check import lm
from optbench.check.loop import start, train
from optbench.check.result import Outcome, verdict
from optbench.check.subject import Subject

STEPS = 40
WINDOW = 5
"""First and last losses are means over this many steps, so one lucky batch does not decide."""
MIN_DROP = 0.1
"""Nats the mean loss must fall by: eight standard deviations of that difference for a model that does not learn
(0.0125, batch noise alone), and under what every built-in optimizer falls at its defaults (0.16 for LAMB, the
least; 1.6 for AdamW)."""


def loss_falls(subject: Subject) -> Outcome:
    run = start(subject, lm.tiny_lm(), STEPS)
    losses = train(run, lm.task(lm.batches(STEPS)), range(STEPS))
    first, last = statistics.fmean(losses[:WINDOW]), statistics.fmean(losses[-WINDOW:])
    finite = all(math.isfinite(loss) for loss in losses)
    note = "" if finite else "a loss was not finite"
    return verdict(finite and first - last >= MIN_DROP, f"{first:.3f} -> {last:.3f} in {STEPS} steps", note,
                   first=first, last=last, steps=STEPS, min_drop=MIN_DROP)
