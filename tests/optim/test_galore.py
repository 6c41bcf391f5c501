"""GaLore: step-by-step agreement with the authors' galore-torch==1.0 GaLoreAdamW on the tiny LM (projections
refreshed several times inside the compared steps), the projection itself on a small case, resume across a
refresh, and the optimizer-state size on a GPT-2 124M-shaped model."""

import importlib
import importlib.util
import sys
import types
import warnings

import pytest
import torch
from torch import nn

from optbench import optim
from optbench.config.compose import compose
from optbench.models import build
from optbench.optim.memory import state_bytes
from optbench.optim.functional.low_rank import project, project_back, projection_side, svd_projection
from optbench.optim.registry import make_config
from tests.optim.harness import (assert_resume_is_bit_identical, compare_with_reference, lm_batches, reference_groups,
                                 reference_roles, tiny_lm, train)


def load_reference():
    """galore_torch.adamw.AdamW (= GaLoreAdamW) without the package's __init__, which also imports bitsandbytes
    for its 8-bit variant (5 s of this file's time). Loaded under a private package name, so a real
    `import galore_torch` elsewhere is unaffected."""
    if "galore_torch" in sys.modules:
        return sys.modules["galore_torch"].GaLoreAdamW
    name = "_galore_torch_reference"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = list(importlib.util.find_spec("galore_torch").submodule_search_locations)
        sys.modules[name] = package
    return importlib.import_module(f"{name}.adamw").AdamW


ReferenceGaLoreAdamW = load_reference()

CASES = {
    # rank below every matrix's smaller side (32), a refresh every 5 updates: new SVD bases at updates 6, 11,
    # 16, 21 inside the 25 compared steps, with moments carried across them as the reference does
    "std": dict(rank=8, update_proj_gap=5, weight_decay=0.1),
    # the larger side projected, a refresh every 3 updates, another scale
    "reverse_std": dict(rank=4, update_proj_gap=3, weight_decay=0.1, proj_type="reverse_std", scale=0.5),
    # the defaults: rank 256 exceeds every tiny matrix's dimensions, so the basis is the full (square) SVD
    "defaults": dict(weight_decay=0.1),
}


def reference_galore(model, **hp):
    """GaLoreAdamW on the test's own role groups: the `matrix` group carries the GaLore keys, as in the authors'
    torchrun_main.py (which projects the attention and MLP Linear weights: our `matrix` role)."""
    cfg = make_config("galore", **hp)
    groups = []
    for g in reference_groups(model, cfg.weight_decay, tagged=True):
        group = {"params": g["params"], "weight_decay": g["weight_decay"]}
        if g["role"] == "matrix":
            group.update(rank=cfg.rank, update_proj_gap=cfg.update_proj_gap, scale=cfg.scale,
                         proj_type=cfg.proj_type)
        groups.append(group)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ReferenceGaLoreAdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                    weight_decay=cfg.weight_decay, no_deprecation_warning=True)


@pytest.mark.parametrize("case", CASES)
def test_matches_galore_torch_step_by_step(case):
    # Observed difference: none (bit-identical) in every case over 25 steps. The SVD's sign ambiguity needs no
    # care: both sides call torch.linalg.svd on bit-identical float32 gradients, so LAPACK returns the same
    # signs; we only mirror the reference's arithmetic (mul/add moments, a slice of U without a copy, decay
    # as p - lr wd p after the update). rtol 1e-5 leaves room for other BLAS builds.
    hp = CASES[case]
    compare_with_reference(lambda m: optim.create("galore", m, **hp), lambda m: reference_galore(m, **hp),
                           batches=lm_batches(25))


def test_defaults_are_the_authors_130m_recipe():
    cfg = make_config("galore")
    assert (cfg.lr, cfg.rank, cfg.update_proj_gap, cfg.scale, cfg.proj_type) == (0.01, 256, 200, 0.25, "std")
    assert (cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay) == (0.9, 0.999, 1e-6, 0.0)


def test_only_hidden_matrices_are_projected():
    model = tiny_lm()
    opt = optim.create("galore", model, rank=4)
    train(model, opt, lm_batches(1))
    params = dict(model.named_parameters())
    for name, role in reference_roles(model).items():
        p, state = params[name], opt.state[params[name]]
        if role == "matrix":
            assert state["projection"].shape[0] * state["projection"].shape[1] == 4 * min(p.shape)
            assert state["exp_avg"].numel() == 4 * max(p.shape)
        else:
            assert "projection" not in state and state["exp_avg"].shape == p.shape


G = torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 0.0]])  # 2 x 3: the left side (rows) is projected


def test_svd_projection_by_hand():
    # G's rows are orthogonal with norms sqrt(10) > 2, so U = I up to signs: rank 1 keeps the first row's
    # direction, and projecting back R = U^T G gives the best rank-1 approximation (the first row alone).
    side = projection_side(G.shape)
    assert side == "left" and projection_side(G.T.shape) == "right"
    basis = svd_projection(G, 1, side)
    torch.testing.assert_close(basis.abs(), torch.tensor([[1.0], [0.0]]))
    low = project(G, basis, side)
    assert low.shape == (1, 3)
    torch.testing.assert_close(project_back(low, basis, side), torch.tensor([[3.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    # the right side of the transpose: Vh's first row, the same subspace
    basis_t = svd_projection(G.T, 1, "right")
    torch.testing.assert_close(project_back(project(G.T, basis_t, "right"), basis_t, "right"),
                               torch.tensor([[3.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))


def test_one_step_by_hand():
    """Step 1 on G with rank 1: m = 0.1 R, v = 0.001 R^2, step lr sqrt(0.001) / 0.1, so (eps -> 0) the
    low-rank direction is sign(R) and the update -lr scale U sign(R), then decay after the update."""
    w = nn.Parameter(torch.ones(2, 3))
    opt = optim.get("galore").build([{"params": [w], "role": "matrix", "weight_decay": 0.1}],
                                    make_config("galore", rank=1, lr=0.1, eps=1e-12, weight_decay=0.1))
    w.grad = G.clone()
    opt.step()
    u = opt.state[w]["projection"]  # +-[1, 0]^T
    sign = torch.sign(u.T @ G)  # R = [3, 0, 1] up to the sign of u; sign(0) = 0 leaves that column alone
    expected = (torch.ones(2, 3) - 0.1 * 0.25 * u @ sign) * (1 - 0.1 * 0.1)
    torch.testing.assert_close(w.detach(), expected)
    torch.testing.assert_close(w.detach()[0], torch.tensor([0.975, 1.0, 0.975]) * 0.99)


def test_resume_across_a_refresh_is_bit_identical():
    assert_resume_is_bit_identical("galore", lm_batches(14), 7, rank=4, update_proj_gap=3)


def bytes_per_param_124m(name: str) -> float:
    """Optimizer-state bytes per parameter of GPT-2 124M at `name`'s defaults. The parameter list comes from a
    meta-device model (no memory); each distinct hidden-matrix shape is stepped once for real (all 12 blocks
    share the 4 shapes), and every other parameter is measured on a small stand-in of its role (AdamW)."""
    cfg = make_config(name)
    with torch.device("meta"):
        model = build(compose(["model=gpt2-124m"]).model, 50257, 1024)
    spec = optim.get(name)

    def measured(shape, role) -> float:
        p = nn.Parameter(torch.zeros(shape))
        p.grad = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        opt = spec.build([{"params": [p], "role": role, "weight_decay": 0.0}], cfg)
        opt.step()
        return state_bytes(opt) / p.numel()

    per_matrix_shape, dense = {}, measured((256, 256), "embedding")
    total = n = 0
    params = dict(model.named_parameters())
    for name, role in reference_roles(model).items():
        shape, size = tuple(params[name].shape), params[name].numel()
        if role == "matrix":
            if shape not in per_matrix_shape:
                per_matrix_shape[shape] = measured(shape, "matrix")
            total += per_matrix_shape[shape] * size
        else:
            total += dense * size
        n += size
    return total / n


def test_state_is_smaller_than_adamws_on_a_124m_model():
    # Expected: each block's matrices keep two max(m, n) x 256 moments and a min(m, n) x 256 basis, 0.78 floats
    # per matrix parameter (3.1 bytes); the tied 38.6M-entry embedding and the vectors keep AdamW's 8 bytes.
    # Together ~4.65 bytes per parameter against AdamW's 8.
    assert bytes_per_param_124m("adamw") == pytest.approx(8.0, abs=0.01)
    galore = bytes_per_param_124m("galore")
    print(f"galore: {galore:.2f} bytes of optimizer state per parameter")
    assert galore == pytest.approx(4.65, abs=0.05)
