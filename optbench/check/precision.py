"""bf16 parameters: the optimizer trains a model held in bfloat16, or refuses it clearly.

The rule: a refusal raised on purpose (TypeError, ValueError, NotImplementedError or optbench's UserError) whose
message names a dtype (bfloat16, bf16, float32, fp32, dtype) is clear, and is reported as a pass marked "fp32-only"
with the message as its note: not every optimizer need train in bf16, but one that cannot must say so. Anything
else fails: another exception (a RuntimeError from a kernel fed mixed dtypes is a crash, not a refusal), a
non-finite loss, a parameter whose dtype the update changed, or no parameter moving at all.
"""

from __future__ import annotations

import math
import re

import torch

from optbench.check import lm
from optbench.check.loop import differing, snapshot, start, train
from optbench.check.result import Outcome, describe, failed, passed
from optbench.check.subject import Subject
from optbench.errors import UserError

STEPS = 5
DTYPE_WORDS = re.compile(r"bfloat16|bf16|float32|fp32|dtype", re.IGNORECASE)
REFUSALS = (TypeError, ValueError, NotImplementedError, UserError)


def bf16(subject: Subject) -> Outcome:
    model = lm.tiny_lm().to(torch.bfloat16)
    before = snapshot(model)
    try:
        run = start(subject, model, STEPS)
        losses = train(run, lm.task(lm.batches(STEPS)), range(STEPS))
    except Exception as err:
        if isinstance(err, REFUSALS) and DTYPE_WORDS.search(str(err)):
            return passed("fp32-only", f"refuses bf16: {describe(err)}", fp32_only=True)
        return failed(f"raised {type(err).__name__}", describe(err), fp32_only=False)
    after = snapshot(model)
    recast = sorted(name for name, value in after.items() if value.dtype != torch.bfloat16)
    if recast:
        return failed(f"{len(recast)} parameters left bfloat16", f"e.g. {recast[0]}: {after[recast[0]].dtype}")
    if not all(math.isfinite(loss) for loss in losses):
        return failed("a loss was not finite", losses=losses)
    if not differing(before, after):
        return failed(f"no parameter moved in {STEPS} steps")
    return passed(f"{losses[0]:.3f} -> {losses[-1]:.3f} in {STEPS} steps", fp32_only=False, losses=losses)
