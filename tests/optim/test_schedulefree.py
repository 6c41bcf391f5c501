"""Schedule-Free AdamW / SGD against the authors' package built directly on groups the test makes, in train and
eval mode, and the exact eval/train swap."""

import pytest
import schedulefree
import torch

from optbench import optim
from optbench.config.schema import ScheduleConfig
from optbench.training.schedules import lr_multiplier
from tests.optim.harness import compare_with_reference, lm_batches, lm_loss, reference_groups, tiny_lm, train

WD = 0.05


def package_adamw(model, **hparams):
    opt = schedulefree.AdamWScheduleFree(reference_groups(model, hparams.get("weight_decay", 0.0)), **hparams)
    opt.train()
    return opt


def package_sgd(model, **hparams):
    opt = schedulefree.SGDScheduleFree(reference_groups(model, hparams.get("weight_decay", 0.0)), **hparams)
    opt.train()
    return opt


def same_average(step, ours, reference):
    """After each step, eval mode (the average x, where the model is evaluated and sampled) agrees bit for bit
    too. The package's train() rebuilds y from x and z by interpolation, a rounding away from the y it left, so
    the reference's y is put back by hand and its trajectory stays the package's own (ours restores y itself)."""
    (model_a, opt_a), (model_b, opt_b) = ours, reference
    y = [p.detach().clone() for p in model_b.parameters()]
    opt_a.eval()
    opt_b.eval()
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(a, b), f"step {step}: {name} in eval mode differs"
    if step > 1:  # x_1 = z_1 = y_1: the average and the iterate part from the second step on
        assert any(not torch.equal(p, y_i) for p, y_i in zip(model_b.parameters(), y)), "eval mode moved nothing"
    opt_a.train()
    opt_b.train()
    with torch.no_grad():
        for p, y_i in zip(model_b.parameters(), y):
            p.copy_(y_i)


@pytest.mark.parametrize("warmup", [0, 4])
def test_sf_adamw_matches_the_package(warmup):
    ours = lambda m: optim.create("sf-adamw", m, lr=0.01, weight_decay=WD, beta2=0.99,  # noqa: E731
                                  warmup_steps=warmup)
    reference = lambda m: package_adamw(m, lr=0.01, betas=(0.9, 0.99), weight_decay=WD,  # noqa: E731
                                        warmup_steps=warmup)
    # the same code runs on both sides: identical bits, not just close
    result = compare_with_reference(ours, reference, rtol=0, atol=0, each_step=same_average)
    assert result.steps == 20


def test_sf_sgd_matches_the_package():
    ours = lambda m: optim.create("sf-sgd", m, lr=0.5, momentum=0.95, weight_decay=WD, r=1.0)  # noqa: E731
    reference = lambda m: package_sgd(m, lr=0.5, momentum=0.95, weight_decay=WD, r=1.0)  # noqa: E731
    result = compare_with_reference(ours, reference, rtol=0, atol=0, each_step=same_average)
    assert result.steps == 20


def test_defaults_are_the_packages():
    adamw = optim.create("sf-adamw", tiny_lm()).defaults
    assert (adamw["lr"], adamw["betas"], adamw["eps"], adamw["warmup_steps"], adamw["r"],
            adamw["weight_lr_power"], adamw["weight_decay"]) == (0.0025, (0.9, 0.999), 1e-8, 0, 0.0, 2.0, 0.0)
    sgd = optim.create("sf-sgd", tiny_lm()).defaults
    assert (sgd["lr"], sgd["momentum"], sgd["weight_decay"]) == (1.0, 0.9, 0.0)


@pytest.mark.parametrize("name", ["sf-adamw", "sf-sgd"])
def test_built_in_train_mode(name):
    model = tiny_lm()
    opt = optim.create(name, model)
    assert all(group["train_mode"] for group in opt.param_groups)
    train(model, opt, lm_batches(2))  # the package raises if step() comes before train()


@pytest.mark.parametrize("name, beta_key", [("sf-adamw", "beta1"), ("sf-sgd", "momentum")])
def test_eval_moves_to_the_average_and_train_restores_exactly(name, beta_key):
    model = tiny_lm()
    opt = optim.create(name, model, lr=0.01 if name == "sf-adamw" else 0.3)
    train(model, opt, lm_batches(5))
    beta = getattr(optim.make_config(name), beta_key)
    params = list(model.parameters())
    y = [p.detach().clone() for p in params]
    z = [opt.state[p]["z"].clone() for p in params]

    opt.eval()
    assert not any(group["train_mode"] for group in opt.param_groups)
    for p, y_i, z_i in zip(params, y, z):  # y = (1 - beta) z + beta x
        torch.testing.assert_close(p, (y_i - (1 - beta) * z_i) / beta, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p, y_i) for p, y_i in zip(params, y))

    opt.eval()  # a second eval() is a no-op
    opt.train()
    assert all(group["train_mode"] for group in opt.param_groups)
    assert all(torch.equal(p, y_i) for p, y_i in zip(params, y)), "train() must restore y bit for bit"


def test_eval_train_round_trip_leaves_the_trajectory_unchanged():
    batches = lm_batches(10)
    runs = []
    for swap in (False, True):
        model = tiny_lm()
        opt = optim.create("sf-adamw", model, lr=0.01)
        for i, batch in enumerate(batches):
            train(model, opt, [batch])
            if swap and i % 3 == 0:
                opt.eval()
                lm_loss(model, batch)  # evaluate at x
                opt.train()
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(*runs)


def test_trainer_warmup_drives_the_package_like_its_own_warmup():
    """schedule.warmup_steps=W with schedule=constant rewrites group["lr"] to (k+1)/(W+1) * lr, which is
    exactly the package's own warmup_steps=W+1: same steps, same weights in the average."""
    warmup, steps, base_lr = 4, 12, 0.01
    schedule = ScheduleConfig(name="constant", warmup_steps=warmup)
    batches = lm_batches(steps)

    model_a = tiny_lm()
    opt_a = optim.create("sf-adamw", model_a, lr=base_lr)
    for k, batch in enumerate(batches):
        for group in opt_a.param_groups:
            group["lr"] = base_lr * lr_multiplier(k, steps, schedule)
        train(model_a, opt_a, [batch])

    model_b = tiny_lm()
    opt_b = optim.create("sf-adamw", model_b, lr=base_lr, warmup_steps=warmup + 1)
    train(model_b, opt_b, batches)

    assert [g["weight_sum"] for g in opt_a.param_groups] == [g["weight_sum"] for g in opt_b.param_groups]
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
