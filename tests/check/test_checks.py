"""optbench.check as a library: the whole check passes for representative built-in optimizers, and the rules that
decide a failure (bf16 refusals, the offending state key, a diverging optimizer's problems) hold."""

import pytest
import torch

from optbench import optim
from optbench.check import FAIL, PASS, check_subject, from_config
from optbench.check.problems import problems
from optbench.check.state import offending
from tests.check.optimizers import MODULE, StepRecord

FULL = ("adamw", "muon", "soap", "lion", "sf-adamw")
"""One of each kind: elementwise adaptive, matrix-only with a backup, Kronecker-preconditioned, sign-based, and
train/eval modes (Schedule-Free). Every optimizer runs the other LM checks one by one in tests/optim/test_conformance.py;
`optbench check-optimizer NAME` runs them all on any of them."""


@pytest.mark.parametrize("name", FULL)
def test_every_check_passes_for_representative_optimizers(name):
    report = check_subject(from_config(optim.make_config(name)))
    failing = {r.check: f"{r.outcome.value}; {r.outcome.note}" for r in report.results if r.outcome.status == FAIL}
    assert not failing, f"{name}: {failing}"
    rosenbrock = next(r for r in report.results if r.check == "rosenbrock").outcome.measured
    # Rosenbrock's point is a vector: a matrix-only optimizer hands it to its backup, whose lr is swept instead.
    assert rosenbrock["taken_by"] == ("backup adamw" if optim.get(name).capabilities.matrix_only else None)


def test_sgd_with_momentum_solves_every_problem():
    """The one reference optimizer whose steps scale with the gradient: the problems' curvatures are chosen so that
    its grid holds a stable lr for each."""
    report = check_subject(from_config(optim.make_config("sgd")), only=[p.name for p in problems()])
    assert not report.failures, [(r.check, r.outcome.note) for r in report.results]


def subject(target: str):
    return from_config(optim.make_config("torch", target=f"{MODULE}:{target}", lr=0.1))


@pytest.mark.parametrize("target, status, value", [
    ("Fp32Only", PASS, "fp32-only"),
    ("CrashesInBf16", FAIL, "raised RuntimeError"),
])
def test_bf16_refused_clearly_is_fp32_only_and_a_crash_fails(target, status, value):
    outcome = check_subject(subject(target), only=["bf16"]).results[0].outcome
    assert (outcome.status, outcome.value) == (status, value)
    assert "float32" in outcome.note or "BFloat16" in outcome.note


def test_decaying_parameters_without_a_gradient_fails_untouched_naming_them():
    cfg = optim.make_config("torch", target=f"{MODULE}:DecaysWithoutGradient", lr=0.1, weight_decay=0.1)
    measured = check_subject(from_config(cfg), only=["untouched"]).results[0].outcome.measured
    # The matrices decay, the vectors' groups have weight decay 0 (routing), and the frozen one is in no group.
    never, later = measured["no_gradient"][0], measured["loses_gradient"][0]
    assert measured["moved"] == [f"{never} (no gradient)", f"{later} (no gradient from step 3)"]


def test_an_optimizer_drawing_from_torchs_stream_is_reproducible_and_leaves_the_callers_stream():
    before = torch.get_rng_state()
    report = check_subject(subject("NoisyGradient"), only=["resume", "same-seed"])
    assert not report.failures, [r.outcome for r in report.results]
    assert torch.equal(torch.get_rng_state(), before)


def test_an_optimizer_going_uphill_fails_to_learn_and_every_problem():
    report = check_subject(subject("Ascends"), only=["loss-falls", *(p.name for p in problems())])
    assert report.failures == ["loss-falls", *(p.name for p in problems())]
    assert all(r.outcome.measured["steps"] is None for r in report.results[1:])


def test_the_offending_state_key_is_the_deepest_that_fails_to_load():
    state = {"state": {0: {"exp_avg": torch.zeros(2), "history": [1.0, StepRecord(3)]}}, "param_groups": []}
    path, bad = offending(state)
    assert path == "state.0.history.1" and isinstance(bad, StepRecord)
