"""VeLO: PyLO's own trajectory replayed to float32 rounding (the class and the registry / config path), weights
loading, features, the horizon and loss hooks, a hand-checkable step. The golden case (../shared/data/golden/velo,
from PyLO's VeLO_naive) pins every number of the update to PyLO's; the other tests pin what it cannot see
(routing's decay per role, resume, errors, the layout round trip) with nets that are random (deterministic) or set
by hand. The conformance suite runs VeLO on random weights too (resume, determinism, errors)."""

import copy
import math

import pytest
import torch
from torch import nn

from optbench import optim
from optbench.config.compose import compose
from optbench.errors import UserError
from optbench.optim.algorithms.velo import (DEFAULT_WEIGHTS, STEP_MULT, VeLO, load_velo_nets,
                                            write_random_weights)
from optbench.optim.learned import features as F
from optbench.optim.learned.velo_net import MLP, RNN, VeLOMLP, VeLORNN
from optbench.optim.learned.weights import construct, randomize_, save_net
from optbench.training.optimizer_hooks import OptimizerHooks
from tests.optim.golden import load_case, replay
from tests.optim.harness import lm_batches, lm_loss, through_disk, tiny_lm, train

SMALL = dict(lstm_hidden_size=16, param_inits=4)
PYLO_RNN_KEYS = {f"{layer}.{kind}" for layer in ("mix_layer1", "mix_layer2", "final_mix_layer", "lstm.linear",
                                                 "rnn_to_controls", "step_size") for kind in ("weight", "bias")}
PYLO_RNN_KEYS |= {"lstm_init_state.0", "lstm_init_state.1"}
PYLO_MLP_KEYS = {f"{name}{suffix}" for name in ("input_weights", "input_bias", "output_weights", "output_bias")
                 for suffix in ("", "_")} | {"hidden_weights.0", "hidden_bias.0", "hidden_weights_.0", "hidden_bias_.0"}


def hand_built(directory, lr_mult: float, param_inits: int = 4):
    """VeLO weights whose LSTM gives controls 1 and lr_mult `lr_mult` to every tensor, and whose mixed MLP is
    direction = 1, magnitude = 0."""
    rnn_config = {"input_size": 30, "lstm_hidden_size": 16, "param_inits": param_inits, "mix_layers": True}
    mlp_config = {"param_inits": param_inits, "input_size": 30, "hidden_size": 4, "hidden_layers": 1, "output_size": 3}
    rnn = randomize_(construct(VeLORNN, rnn_config, "rnn"), 0)
    mlp = construct(VeLOMLP, mlp_config, "mlp")
    with torch.no_grad():
        rnn.rnn_to_controls.weight.zero_(), rnn.rnn_to_controls.bias.fill_(1.0)
        rnn.step_size.weight.zero_(), rnn.step_size.bias.fill_(lr_mult)
        for t in mlp.parameters():
            t.zero_()
        mlp.output_bias_[:, 0] = 1.0 / 100  # every stored set equal: the mix with controls 1 is 100 x that set
    save_net(rnn, rnn_config, directory / RNN.label)
    save_net(mlp, mlp_config, directory / MLP.label)
    return str(directory)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    return str(write_random_weights(tmp_path_factory.mktemp("velo"), seed=3, **SMALL))


# Every parameter after every step vs PyLO's. Measured (torch 2.14, MKL, x86): max rel diff 1.9e-7 with 2 threads,
# 2.8e-7 with 1; max abs 1.5e-8 (AVX512 / AVX2 kernels), 1.2e-7 (ATEN_CPU_CAPABILITY=default): 1-3 float32 ulps.
# The smallest recorded entry is 8.9e-3, so rtol alone bounds every entry (atol 0). Two input features swapped
# move the final parameters by >= 2.4e-3 (the data's README): far outside this.
GOLDEN_RTOL, GOLDEN_ATOL = 2e-6, 0.0


def test_replays_pylo_trajectory(shared_data):
    """optbench's VeLO class with PyLO's kwargs (lr 1, num_steps 10, weight_decay 0.01), one param group in PyLO's
    order, the weights as two sources 'RNN,MLP', the loss (a 0-d float32 tensor, as PyLO got it) by observe_loss."""
    case = load_case(shared_data, "velo")
    rnn, mlp = load_velo_nets(f"{case.weights}/{RNN.label},{case.weights}/{MLP.label}")
    params = case.parameters()
    opt = VeLO(list(params.values()), rnn, mlp, **case.kwargs)
    replay(case, params, opt, GOLDEN_RTOL, GOLDEN_ATOL, before_step=lambda t: opt.observe_loss(case.loss(t)))


@pytest.mark.parametrize("entry", ["create", "compose"])
def test_replays_pylo_trajectory_through_the_registry(shared_data, entry):
    """The user's path: `optim.create("velo", model, weights=DIR)` or the CLI's overrides (optim=velo
    optim.weights=DIR), then the trainer's hooks: set_horizon(num_steps) before training, observe_loss(float) before
    each step. lr is left at its default (the case runs PyLO's lr 1), so a wrong default, a lost override or a
    broken hook fails. Routing groups by role (vectors first: the LSTM's rows come in another order than PyLO's,
    which must not matter) and never decays vectors; PyLO's one group decays all five tensors, so once routing's
    choice is checked the vector group gets the case's decay."""
    case = load_case(shared_data, "velo")
    wd = case.kwargs["weight_decay"]
    model = case.module()
    if entry == "create":
        opt = optim.create("velo", model, weight_decay=wd, weights=case.weights)
    else:
        cfg = compose(["optim=velo", f"optim.weights='{case.weights}'", f"optim.weight_decay={wd}"]).optim
        opt = optim.build(cfg, model)
    assert [(g["role"], g["names"], g["weight_decay"]) for g in opt.param_groups] == [
        ("vector", ["bias", "gain"], 0.0), ("matrix", ["w_tall", "w_square", "w_wide"], wd)]
    for group in opt.param_groups:
        group["weight_decay"] = wd
    hooks = OptimizerHooks(opt, optim.get("velo").capabilities)
    hooks.before_training(case.kwargs["num_steps"])
    # The case's loss falls at every step, so each loss EMA sits at its running minimum and the loss features
    # cannot tell half-lives apart: check directly that the horizon reached them. PyLO: half-lives
    # logspace(1, log10(num_steps), 10), all 10 steps for num_steps 10, decays exp(-1 / 10).
    torch.testing.assert_close(opt.velo_state["loss_decays"], torch.full((10,), math.exp(-0.1)), rtol=1e-6, atol=0)
    replay(case, dict(model.named_parameters()), opt, GOLDEN_RTOL, GOLDEN_ATOL,
           before_step=lambda t: hooks.before_step(case.loss(t).item()))


def test_factored_dimensions_and_state_shapes_per_kind_of_tensor():
    assert F.factored_dims((8, 5)) == (1, 0)  # (second largest, largest)
    assert F.factored_dims((6, 6)) == (0, 1) and F.factored_dims((6, 6), transposed_ties=True) == (1, 0)
    assert F.factored_dims((4, 4, 3, 3), transposed_ties=True) == (0, 1)  # PyLO's exception for 4-D ties
    assert F.factored_dims((5,)) is None
    shapes = {(8, 5): ((5, 3), (8, 3), (0,)), (64, 32): ((32, 3), (64, 3), (0,)), (6, 6): ((6, 3), (6, 3), (0,)),
              (5,): ((0,), (0,), (5, 3))}
    for shape, (row, col, full) in shapes.items():
        p = torch.randn(shape)
        state = F.init_accumulators(p, VeLO._dims(p))
        assert state["mom"].shape == shape + (3,) and state["rms"].shape == shape + (1,)
        assert (state["fac_vec_row"].shape, state["fac_vec_col"].shape, state["fac_vec_v"].shape) == (row, col, full)
        g = torch.randn(shape)
        fac_g = F.update_accumulators_(state, g, VeLO._dims(p), *(F.decays(d, (0.0,) * len(d)) for d in (
            F.INITIAL_MOMENTUM_DECAYS, F.INITIAL_RMS_DECAYS, F.INITIAL_ADAFACTOR_DECAYS)))
        x = F.velo_mlp_features(p, g, state, fac_g, VeLO._dims(p))
        assert x.shape == shape + (30,) and torch.isfinite(x).all()
        # each column is normalised over the tensor's entries: mean square m / (1e-5 + m) for a raw mean square m
        mean_square = x.pow(2).mean(dim=tuple(range(len(shape))))
        assert (mean_square <= 1 + 1e-5).all() and abs(mean_square[0] - 1) < 1e-4  # column 0: the gradient
        row = F.lstm_tensor_features(p, state["mom"], state["rms"], F.fractional_tanh_embed(0.5),
                                     torch.zeros(9), F.tensor_rank(shape))
        assert row.shape == (30,) and row[18 + 1 + len(shape)] == 1.0  # rank one-hot after fraction, loss, mean_rms


def test_decays_momentum_update_and_loss_features_by_hand():
    torch.testing.assert_close(F.decays((0.9, 0.99), (0.0, 0.0)), torch.tensor([0.9, 0.99]))
    state = F.init_accumulators(torch.zeros(3), None)
    decay = torch.tensor([0.5, 0.9, 0.99])
    F.update_accumulators_(state, torch.tensor([2.0, -4.0, 0.0]), None, decay, torch.tensor([0.5]), decay)
    torch.testing.assert_close(state["mom"][:, 0], torch.tensor([1.0, -2.0, 0.0]))
    torch.testing.assert_close(state["rms"][:, 0], torch.tensor([2.0, 8.0, 0.0]))
    buffer = F.LossBuffer.init(100)
    for i, loss in enumerate([5.0, 4.0, 3.0, 2.5, 2.0, 1.8]):
        F.LossBuffer.update_(buffer, torch.tensor(loss))
        features = F.LossBuffer.features(buffer)
        assert features.shape == (9,)
        assert torch.equal(features, torch.zeros(9)) if i < 2 else (features <= 0).all()  # falling: below longer EMAs


def test_one_step_by_hand_with_constant_direction(tmp_path):
    """controls 1, lr_mult 3, direction 1, magnitude 0: p <- (p - lr 3 0.001 RMS(p)) (1 - lr wd)."""
    model = tiny_lm()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = optim.create("velo", model, lr=0.5, weight_decay=0.01, weights=hand_built(tmp_path, lr_mult=3.0))
    train(model, opt, lm_batches(1), name="velo")
    decays = {name: g["weight_decay"] for g in opt.param_groups for name in g["names"]}
    assert 0.0 in decays.values() and any(v > 0 for v in decays.values())  # vectors keep, matrices decay
    for name, p in model.named_parameters():
        p0 = before[name]
        step = 3.0 * (torch.sqrt(torch.mean(p0 ** 2) + 1e-9) * STEP_MULT)
        expected = (p0 - 0.5 * step) * (1 - 0.5 * (0.01 if decays[name] > 0 else 0.0))
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-9, msg=name)


def test_horizon_hook_changes_the_update(random_weights):
    """The trainer's set_horizon reaches VeLO, and the horizon matters: the same first step (fraction 0 and loss
    features zero either way), a different second (fraction 1/10 vs 1/1000)."""
    model = tiny_lm()
    opt = optim.create("velo", model, weights=random_weights)
    train(model, opt, lm_batches(4), name="velo")
    assert int(opt.velo_state["num_steps"]) == 4

    def run(horizon, steps):
        model = tiny_lm()
        opt = optim.create("velo", model, weights=random_weights)
        opt.set_horizon(horizon)
        for batch in lm_batches(steps):
            loss = lm_loss(model, batch)
            loss.backward()
            opt.observe_loss(loss.item())
            opt.step()
            opt.zero_grad()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(10, 1), run(1000, 1))
    assert not torch.equal(run(10, 2), run(1000, 2))


def test_set_horizon_on_a_resumed_run_keeps_the_state(random_weights):
    """The trainer calls set_horizon again after restoring a checkpoint: the loss buffer must survive it."""
    batches = lm_batches(8)
    model = tiny_lm()
    opt = optim.create("velo", model, weights=random_weights)
    train(model, opt, batches[:4], name="velo")  # set_horizon(4) first
    saved_model, saved_opt = through_disk(model.state_dict()), through_disk(opt.state_dict())
    train(model, opt, batches[4:], name="velo", first_step=4)
    resumed = tiny_lm(seed=1)
    resumed.load_state_dict(saved_model)
    resumed_opt = optim.create("velo", resumed, weights=random_weights)
    resumed_opt.load_state_dict(saved_opt)
    resumed_opt.set_horizon(4)
    train(resumed, resumed_opt, batches[4:], name="velo", first_step=4)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_needs_the_loss_and_takes_a_closure(random_weights):
    model = tiny_lm()
    opt = optim.create("velo", model, weights=random_weights)
    batch = lm_batches(1)[0]
    lm_loss(model, batch).backward()
    with pytest.raises(RuntimeError, match="observe_loss"):
        opt.step()
    twin = copy.deepcopy(model)
    twin_opt = optim.create("velo", twin, weights=random_weights)
    loss = opt.step(lambda: lm_loss(model, batch))
    twin_opt.observe_loss(loss.item())
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()
    twin_opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_matrices_vectors_and_embeddings_all_move(random_weights):
    model = nn.Sequential(nn.Embedding(16, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 3))
    before = [p.detach().clone() for p in model.parameters()]
    opt = optim.create("velo", model, weights=random_weights)
    assert {g["role"] for g in opt.param_groups} == {"embedding", "vector", "matrix"}
    for _ in range(2):
        model(torch.arange(6)).pow(2).mean().backward()
        opt.observe_loss(1.0)
        opt.step()
        opt.zero_grad()
    for p, p0 in zip(model.parameters(), before):
        assert p.shape == p0.shape and torch.isfinite(p).all() and not torch.equal(p, p0)


def test_published_layout_round_trips_with_pylo_names(tmp_path):
    directory = write_random_weights(tmp_path, seed=5, **SMALL)
    rnn, mlp = load_velo_nets(str(directory))
    assert set(rnn.state_dict()) == PYLO_RNN_KEYS and set(mlp.state_dict()) == PYLO_MLP_KEYS
    again = write_random_weights(tmp_path / "again", seed=5, **SMALL)
    assert (directory / RNN.label / "model.safetensors").read_bytes() == (again / RNN.label / "model.safetensors"
                                                                         ).read_bytes()  # deterministic
    save_net(rnn, {"input_size": 30, **SMALL, "mix_layers": True}, tmp_path / "copy" / RNN.label)
    save_net(mlp, {"param_inits": 4, "input_size": 30, "hidden_size": 4, "hidden_layers": 1, "output_size": 3},
             tmp_path / "copy" / MLP.label)
    rnn2, mlp2 = load_velo_nets(f"{tmp_path / 'copy' / RNN.label},{tmp_path / 'copy' / MLP.label}")  # 'RNN,MLP'
    for a, b in ((rnn, rnn2), (mlp, mlp2)):
        for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), key


def test_scratch_tensors_are_optional_and_a_wrong_file_is_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = write_random_weights(tmp_path, **SMALL)
    path = str(directory / MLP.label / "model.safetensors")
    tensors = load_file(path)
    save_file({k: v for k, v in tensors.items() if k.endswith("_") or "_." in k}, path)
    load_velo_nets(str(directory))
    save_file({**tensors, "extra": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="unexpected") as info:
        load_velo_nets(str(directory))
    assert "\n" not in str(info.value)


def test_missing_weights_are_one_line_naming_the_hub_repos_and_the_option(tmp_path, monkeypatch):
    with pytest.raises(UserError) as info:
        optim.create("velo", tiny_lm(), weights=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "\n" not in message and "optim.weights=" in message
    assert RNN.repo_id in message and MLP.repo_id in message
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the hub unreachable, nothing cached
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError) as info:
        optim.create("velo", tiny_lm())  # the default: PyLO's hub repos
    message = str(info.value)
    assert optim.make_config("velo").weights == DEFAULT_WEIGHTS
    assert "\n" not in message and RNN.repo_id in message and "optim.weights=" in message
