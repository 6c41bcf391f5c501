"""muLO: weights loading, features, muP's per-layer scaling on a hand-checkable model, descent with a hand-built
net. No published weights are needed: nets are random (deterministic) or set by hand. The conformance suite runs
muLO on random weights too (resume, determinism, errors)."""

import pytest
import torch
from torch import nn

from optbench import optim
from optbench.errors import UserError
from optbench.optim.algorithms.mulo import (ADAFACTOR_DECAY_OFFSETS, MOMENTUM_DECAY_OFFSETS, STEP_MULT, MuLO,
                                            clip_norm, load_mulo_net, width_mult, write_random_weights)
from optbench.optim.learned import features as F
from optbench.optim.learned.mulo_net import MLP, MetaMLP
from optbench.optim.learned.weights import construct, save_net
from tests.optim.harness import lm_batches, tiny_lm, train

PYLO_KEYS = {f"network.{layer}.{kind}" for layer in ("input", "linear_0", "output") for kind in ("weight", "bias")}


def hand_built(directory, direction_column: int | None = None) -> str:
    """muLO weights with magnitude 0 and direction 1 (None) or = feature `direction_column` (relu(x) - relu(-x))."""
    config = {"input_size": 39, "hidden_size": 4, "hidden_layers": 1}
    net = construct(MetaMLP, config, "mlp")
    with torch.no_grad():
        for t in net.parameters():
            t.zero_()
        layers = net.network
        if direction_column is None:
            layers.output.bias[0] = 1.0
        else:
            layers.input.weight[0, direction_column], layers.input.weight[1, direction_column] = 1.0, -1.0
            layers.linear_0.weight[0, 0], layers.linear_0.weight[1, 1] = 1.0, 1.0
            layers.output.weight[0, 0], layers.output.weight[0, 1] = 1.0, -1.0
    return str(save_net(net, config, directory))


class Tiny(nn.Module):
    """One parameter of each role: embedding, matrix (fan_in 8) + its bias, LayerNorm vectors, an untied head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.wte = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.lm_head = nn.Linear(16, 10, bias=False)

    def forward(self, idx):
        return self.lm_head(self.ln(self.fc(self.wte(idx))))


def test_features_state_and_decays():
    p, g = torch.randn(6, 6), torch.randn(6, 6)
    dims = MuLO._dims(p)
    assert dims == (0, 1)  # PyLO's AdafacLO: plain argsort order, no swap for square matrices (unlike its VeLO)
    state = F.init_accumulators(p, dims)
    assert state["fac_vec_row"].shape == (6, 3) and state["fac_vec_col"].shape == (6, 3)
    momentum = F.decays(F.INITIAL_MOMENTUM_DECAYS, MOMENTUM_DECAY_OFFSETS)
    # decay = 1 - (1 - d0) exp(10 offset): muLO's meta-learned offsets in log(1 - decay) / 10 space
    torch.testing.assert_close(momentum[0], torch.tensor(1 - 0.1 * torch.exp(torch.tensor(1.5216392)).item()))
    adafactor = F.decays(F.INITIAL_ADAFACTOR_DECAYS, ADAFACTOR_DECAY_OFFSETS)
    assert adafactor[1] > 0.99  # a negative offset lengthens the memory
    fac_g = F.update_accumulators_(state, g, dims, momentum, F.decays((0.999,), (0.01079706,)), adafactor)
    x = F.mulo_mlp_features(p, g, state, fac_g, dims, iteration=3)
    assert x.shape == (6, 6, 39) and torch.isfinite(x).all()
    torch.testing.assert_close(x[2, 4, 28:], torch.tanh(3.0 / torch.tensor(F.STEP_TIMESCALES, dtype=torch.float32) - 1))
    torch.testing.assert_close(x[..., 0].pow(2).mean(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)  # g, normalised


@pytest.mark.parametrize("base_width", [1.0, 4.0])
def test_mup_scaling_per_layer_by_hand(tmp_path, base_width):
    """direction 1, magnitude 0: every entry moves by lr_eff 0.01, lr_eff = lr for the embedding, the head and
    vectors, lr base_width / fan_in for the hidden matrix (fan_in 8); then decay by (1 - lr_eff wd) where routing
    decays (matrices, head, embedding; not vectors)."""
    model = Tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr, wd = 0.5, 0.1
    opt = optim.create("mulo", model, lr=lr, weight_decay=wd, base_width=base_width, weights=hand_built(tmp_path))
    roles = {n: g["role"] for g in opt.param_groups for n in g["names"]}
    assert roles == {"wte.weight": "embedding", "fc.weight": "matrix", "fc.bias": "vector", "ln.weight": "vector",
                     "ln.bias": "vector", "lm_head.weight": "head"}
    model(torch.arange(10)).pow(2).mean().backward()
    opt.step()
    lr_eff = {n: lr * base_width / 8 if n == "fc.weight" else lr for n in before}
    for name, p in model.named_parameters():
        decay = wd if roles[name] in ("matrix", "head", "embedding") else 0.0
        expected = (before[name] - lr_eff[name] * STEP_MULT) * (1 - lr_eff[name] * decay)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-9, msg=name)
    assert width_mult("matrix", (16, 8), base_width) == 8 / base_width and width_mult("head", (10, 16), 1.0) == 1.0


def test_loss_falls_with_a_hand_built_adam_like_net(tmp_path):
    """Direction = the normalised mom(first decay) / sqrt(rms) feature (column 6): Adam-like, so the plumbing
    (accumulators, features, MLP, muP scaling) descends."""
    model = tiny_lm()
    opt = optim.create("mulo", model, weights=hand_built(tmp_path, direction_column=6))
    losses = train(model, opt, lm_batches(40), name="mulo")
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.25, f"{first:.3f} -> {last:.3f}"


def test_hidden_matrices_must_be_2d(tmp_path):
    model = nn.Module()
    model.experts = nn.Parameter(torch.zeros(2, 3, 4))
    with pytest.raises(UserError, match="experts") as info:
        optim.create("mulo", model, weights=str(write_random_weights(tmp_path, hidden_size=8)))
    assert "\n" not in str(info.value)


def test_per_tensor_gradient_clipping_leaves_grad_alone(tmp_path):
    torch.testing.assert_close(clip_norm(torch.tensor([3.0, 4.0]), 1.0), torch.tensor([0.6, 0.8]), rtol=1e-5, atol=0)
    torch.testing.assert_close(clip_norm(torch.tensor([0.3, 0.4]), 1.0), torch.tensor([0.3, 0.4]))
    model = Tiny()
    opt = optim.create("mulo", model, max_grad_norm=1e-3, weights=str(write_random_weights(tmp_path, hidden_size=8)))
    model(torch.arange(10)).pow(2).mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_published_layout_round_trips_with_pylo_names(tmp_path):
    directory = write_random_weights(tmp_path / "a", seed=7)
    net = load_mulo_net(str(directory))
    assert set(net.state_dict()) == PYLO_KEYS and net.network.input.in_features == 39
    again = write_random_weights(tmp_path / "b", seed=7)
    assert (directory / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    copy = load_mulo_net(str(save_net(net, {"input_size": 39, "hidden_size": 32, "hidden_layers": 1}, tmp_path / "c")))
    for (key, x), (_, y) in zip(net.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(x, y), key
    x = torch.randn(5, 39)
    assert torch.equal(net(x), copy(x))


def test_missing_weights_are_one_line_naming_the_hub_repo_and_the_option(tmp_path, monkeypatch):
    with pytest.raises(UserError) as info:
        optim.create("mulo", tiny_lm(), weights=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "\n" not in message and MLP.repo_id in message and "optim.weights=" in message
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert optim.make_config("mulo").weights == MLP.repo_id == "btherien/mulo"
    with pytest.raises(UserError) as info:
        optim.create("mulo", tiny_lm())
    assert "\n" not in str(info.value) and MLP.repo_id in str(info.value)
