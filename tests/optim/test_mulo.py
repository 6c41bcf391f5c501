"""muLO: PyLO's own trajectory replayed to float32 rounding (the class and the registry / config path), muP's
per-group lr against PyLO's MuLO_naive rule, weights loading, features, muP's per-layer scaling by hand. The golden
case (../shared/data/golden/mulo, from PyLO's AdafacLO_naive, muLO's update) pins every number of the update to
PyLO's; the other tests pin what it cannot see (routing, the width rule, clipping, errors, the layout round trip)
with nets that are random (deterministic) or set by hand. The conformance suite runs muLO on random weights too
(resume, determinism, errors)."""

import pytest
import torch
from torch import nn

from optbench import optim
from optbench.config.compose import compose
from optbench.errors import UserError
from optbench.models import GPT2Config, build
from optbench.optim.algorithms.mulo import (ADAFACTOR_DECAY_OFFSETS, MOMENTUM_DECAY_OFFSETS, STEP_MULT, MuLO,
                                            clip_norm, load_mulo_net, width_mult, write_random_weights)
from optbench.optim.learned import features as F
from optbench.optim.learned.mulo_net import MLP, MetaMLP
from optbench.optim.learned.weights import construct, save_net
from tests.optim.golden import load_case, replay
from tests.optim.harness import tiny_lm

PYLO_KEYS = {f"network.{layer}.{kind}" for layer in ("input", "linear_0", "output") for kind in ("weight", "bias")}


def hand_built(directory) -> str:
    """muLO weights with magnitude 0 and direction 1."""
    config = {"input_size": 39, "hidden_size": 4, "hidden_layers": 1}
    net = construct(MetaMLP, config, "mlp")
    with torch.no_grad():
        for t in net.parameters():
            t.zero_()
        net.network.output.bias[0] = 1.0
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


# Every parameter after every step vs PyLO's. Measured (torch 2.14, MKL, x86): bit-identical with the AVX512 and AVX2
# kernels, 1 or 2 threads; max abs 1.2e-7, max rel 1.2e-7 with ATEN_CPU_CAPABILITY=default (1 float32 ulp). The
# smallest recorded entry is 5.3e-2, so rtol alone bounds every entry (atol 0). Two input features swapped move the
# final parameters by >= 1e-3 for most pairs (the data's README): far outside this.
GOLDEN_RTOL, GOLDEN_ATOL = 1e-6, 0.0


def test_replays_pylo_trajectory(shared_data):
    """optbench's MuLO class with PyLO's kwargs (lr 0.1, weight_decay 0.01; max_grad_norm None is our 0), one
    param group in PyLO's order and no role, so no muP scaling (AdafacLO_naive's update)."""
    case = load_case(shared_data, "mulo")
    kwargs = case.kwargs
    assert kwargs.pop("max_grad_norm") is None
    params = case.parameters()
    opt = MuLO(list(params.values()), load_mulo_net(case.weights), max_grad_norm=0.0, **kwargs)
    replay(case, params, opt, GOLDEN_RTOL, GOLDEN_ATOL)


@pytest.mark.parametrize("entry", ["create", "compose"])
def test_replays_pylo_trajectory_through_the_registry(shared_data, entry):
    """The user's path: `optim.create("mulo", model, weights=DIR)` or the CLI's overrides (optim=mulo
    optim.weights=DIR), max_grad_norm left at its default (PyLO's None: no clipping), so a wrong default or a lost
    override fails. The model is muP at its base width (multiplier 1 on its matrices, as an optbench muP model with
    n_embd = mup_base_width declares): PyLO's MuLO_naive then divides the matrices' lr by 1, i.e. runs
    AdafacLO_naive's numbers, and routing must not scale it again (an SP model's matrices would get lr / fan_in).
    Routing never decays vectors; PyLO's one group decays all five tensors, so once routing's choice is checked
    the vector group gets the case's decay."""
    case = load_case(shared_data, "mulo")
    lr, wd = case.kwargs["lr"], case.kwargs["weight_decay"]
    model = case.module(lr_multiplier=1.0)
    if entry == "create":
        opt = optim.create("mulo", model, lr=lr, weight_decay=wd, weights=case.weights)
    else:
        overrides = ["optim=mulo", f"optim.weights='{case.weights}'", f"optim.lr={lr}", f"optim.weight_decay={wd}"]
        opt = optim.build(compose(overrides).optim, model)
    assert [(g["role"], g["names"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("vector", ["bias", "gain"], lr, 0.0), ("matrix", ["w_tall", "w_square", "w_wide"], lr, wd)]
    for group in opt.param_groups:
        group["weight_decay"] = wd
    replay(case, dict(model.named_parameters()), opt, GOLDEN_RTOL, GOLDEN_ATOL)


def mup_width_mults(model: nn.Module, base: nn.Module) -> dict[str, float]:
    """What `mup.set_base_shapes(model, base)` gives PyLO's MuLO_naive, computed from shapes alone: a dimension is
    infinite where it differs from the base model's; a parameter with two infinite dimensions is matrix-like, its
    width_mult its last infinite dimension (nn.Linear's fan_in) over the base's (mup's InfShape.width_mult); the
    rest (embeddings, vectors) are vector-like and absent here."""
    base_shapes = {name: p.shape for name, p in base.named_parameters()}
    mults = {}
    for name, p in model.named_parameters():
        infinite = [i for i, (n, b) in enumerate(zip(p.shape, base_shapes[name])) if n != b]
        if len(infinite) == 2:
            mults[name] = p.shape[infinite[-1]] / base_shapes[name][infinite[-1]]
    return mults


def test_mup_matrix_lr_is_the_base_lr_over_the_width_multiplier(tmp_path):
    """PyLO's MuLO_naive: each matrix-like parameter's group lr is the base lr / its width multiplier, vector-like
    ones keep the base lr. On an optbench muP model, width 32 over base width 8, the multipliers (computed here as
    mup would, from the base model's shapes) are all 32 / 8 = 4; routing must give exactly those group lrs, and
    muLO must step with them as they are (one step equals a plain muLO at that lr, per parameter)."""
    base_lr, width, base_width = 0.1, 32, 8
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=width, mup=True, mup_base_width=base_width)
    torch.manual_seed(0)
    model = build(cfg, 64, 16)
    mults = mup_width_mults(model, build(GPT2Config(n_layer=1, n_head=2, n_embd=base_width), 64, 16))
    assert len(mults) == 4 and set(mults.values()) == {width / base_width}  # q/k/v, attention out, MLP in, MLP out
    weights = str(write_random_weights(tmp_path, hidden_size=8))
    opt = optim.create("mulo", model, lr=base_lr, weights=weights)
    lr_of = {name: g["lr"] for g in opt.param_groups for name in g["names"]}
    assert lr_of == pytest.approx({name: base_lr / mults.get(name, 1.0) for name, _ in model.named_parameters()})
    assert all(g["role"] == "matrix" for g in opt.param_groups if set(g["names"]) & set(mults))
    generator = torch.Generator().manual_seed(0)
    twins = {}
    for name, p in model.named_parameters():
        p.grad = torch.randn(p.shape, generator=generator)
        twin = nn.Parameter(p.detach().clone())
        twin.grad = p.grad.clone()
        twins[name] = (twin, MuLO([twin], load_mulo_net(weights), lr=lr_of[name]))
    opt.step()
    for name, p in model.named_parameters():
        twin, twin_opt = twins[name]
        twin_opt.step()
        torch.testing.assert_close(p.detach(), twin.detach(), rtol=0, atol=0, msg=name)


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
