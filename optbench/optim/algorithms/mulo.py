"""muLO (Therien, Joseph, Knyazev, Oyallon, Rish, Belilovsky, 2024, "muLO: Compute-Efficient Meta-Generalization
of Learned Optimizers", arXiv 2406.00153): small_fc_lopt (Metz et al. 2022, arXiv 2203.11860), a per-parameter
MLP over 39 features (momenta at 3 decays, second moments, Adafactor-style factored statistics, the training
step), meta-trained under the Maximal Update Parametrization. Its step, for a parameter of μP width multiplier
w (a hidden matrix: fan_in / base fan_in; everything else: 1), with (d, m) = MLP(features):

    p <- p - (lr / w) d exp(0.001 m) 0.01                           (then p <- p (1 - (lr / w) wd))

Source: optbench, pure PyTorch, following PyLO (Belilovsky-Lab/pylo, arXiv 2506.10315; BSD-3):
    pylo/optim/MuLO_naive.py      commit e9c898b9e204de2c3222e2f54dc46f032c0ee242 (muP groups: lr / width_mult
                                  for matrix-like parameters, mup's MuAdam rule)
    pylo/optim/AdafacLO_naive.py  commit 1f959f00a3fe609385979a6761139a021d693213 (the update, with muLO's
                                  meta-learned decay offsets as defaults; step_mult 0.01, exp_mult 0.001, lr 1)
    pylo/models/Meta_MLP.py (see optbench/optim/learned/mulo_net.py)
which port learned_optimization's learned_optimizers/adafac_mlp_lopt.py and the authors' muLO code
(bentherien/mu_learned_optimization). Published weights: hub repo btherien/mulo (PyLO's default), loaded with
safetensors.

muP, decided here: PyLO's MuLO needs a model prepared with `mup.set_base_shapes` and divides each hidden matrix's
lr by its width multiplier, the same one the model's MuReadout divides the logits by. On a muP model
(`model.mup=true`, optbench/models/mup.py) the model plays that part: routing puts its multiplier into each hidden
matrix's group (`lr_mult` = 1/m, m = n_embd / model.mup_base_width, group lr already divided by m) and muLO uses
that lr as it is, so the model half (logits / m, 1/sqrt(m) hidden init, 1/d attention) and the optimizer half share
one m, as in PyLO (its examples/mumlp.py reads the base shapes of a width-64 model); optim.base_width is then
unused. (Dividing again by fan_in / base_width would scale hidden steps twice.) Routing also multiplies those
groups' weight decay by m, as mup's MuAdam does, so their decay per step is lr wd. On a standard model, routing gives
each group only a role, and we map roles to mup's classes:
    matrix     (hidden weights, both dimensions grow with width)  ->  matrix-like: w = fan_in / base_width
    embedding  (token / position tables, a tied head: one dimension grows)
    head       (an untied output projection: one dimension grows)
    vector     (norm gains, biases)                                 ->  vector-like: w = 1
base_width (default 1) is the base fan_in; PyLO's examples set every base dimension to 1
(`set_base_shapes(..., override_base_dim=1)`), so w = fan_in as in the muLO paper's hidden-layer rule. Hidden
matrices must be 2-D (fan_in = shape[1], nn.Linear's layout); other shapes are refused, as PyLO refuses more than
2 infinite dimensions. This is the optimizer half of muP. The model half -- the output layer's 1/width
multiplier (mup's MuReadout), muP initialisation and 1/d attention scaling -- belongs to the model: without
model.mup, muLO runs its muP update rule on an SP network, the setting PyLO refuses (its MuLO asserts base
shapes). Its meta-generalisation across widths is a claim about muP networks and does not carry over to SP models;
there, treat muLO as a learned optimizer with a fixed width rule, and use model.mup=true for muLO as specified.

Deliberate differences from PyLO:
- Weight decay is applied (decoupled, after the step, as PyLO's VeLO does): PyLO's MuLO accepts weight_decay
  but its naive update ignores it and its CUDA kernel is passed 0. Default 0, so the default is PyLO's update.
- max_grad_norm > 0 clips each tensor's gradient norm (PyLO's per-tensor clip_grad_norm_) without changing
  p.grad; 0 (PyLO: None) disables it.
- The step counter is per parameter (PyLO: per group); they agree whenever every parameter has a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import UserError, check
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.learned import features as F
from optbench.optim.learned.mulo_net import MLP, MetaMLP
from optbench.optim.learned.weights import construct, load_net, locate, randomize_, save_net
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import LogUniform

PYLO = "PyLO (Belilovsky-Lab/pylo) pylo/optim/MuLO_naive.py@e9c898b9 + AdafacLO_naive.py@1f959f00"
MOMENTUM_DECAY_OFFSETS = (0.15216392, 0.14245212, 0.06812963)
RMS_DECAY_OFFSETS = (0.01079706,)
ADAFACTOR_DECAY_OFFSETS = (0.18621896, -0.10864615, -0.06185547)
"""muLO's meta-learned decay offsets (PyLO's AdafacLO defaults; not stored in the hub weights)."""
EXP_MULT = 0.001
STEP_MULT = 0.01
WEIGHTS_HINT = (f"get them with `hf download {MLP.repo_id} --local-dir DIR`, "
                f"then pass optim.weights=DIR")


@dataclass
class MuLOConfig(OptimConfig):
    name: str = "mulo"
    lr: float = 1.0
    """A multiplier on muLO's step (PyLO's lr, default 1); hidden matrices get lr / width multiplier."""
    weight_decay: float = 0.0
    """Decoupled, after the step: p <- p (1 - lr_eff wd) with lr_eff the parameter's muP-scaled lr."""
    weights: str = MLP.repo_id
    """A directory with config.json + model.safetensors (as the hub repo), or a hub repo id (default: PyLO's)."""
    base_width: float = 1.0
    """The base fan_in of muP's width multiplier fan_in / base_width for hidden matrices (PyLO's examples: 1);
    unused on a muP model (model.mup=true), whose own width multiplier routing passes in each group."""
    max_grad_norm: float = 0.0
    """Clip each tensor's gradient to this norm before the update (PyLO's max_grad_norm); 0 disables."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.base_width > 0, f"optim.base_width={self.base_width} must be positive")
        check(self.max_grad_norm >= 0, f"optim.max_grad_norm={self.max_grad_norm} must be >= 0")
        check(bool(self.weights.strip()), "optim.weights must name a directory or a hub repo id")


def load_mulo_net(weights: str) -> MetaMLP:
    """PyLO's muLO MLP from a directory or hub repo id; a one-line UserError if absent."""
    net = load_net(locate(weights.strip(), MLP, subfolder=False, hint=WEIGHTS_HINT), MetaMLP, "muLO's MLP")
    features = F.MULO_MLP_FEATURES + len(F.STEP_TIMESCALES)
    check(net.input_size == features, f"muLO's weights take {net.input_size} inputs; muLO computes {features}")
    return net


def write_random_weights(directory, seed: int = 0, hidden_size: int = 32) -> Path:
    """Deterministic random muLO weights in the published layout (DIR/config.json + model.safetensors), for
    tests: every mechanism runs, nothing is meta-trained. Returns DIR, for optim.weights."""
    config = {"input_size": F.MULO_MLP_FEATURES + len(F.STEP_TIMESCALES), "hidden_size": hidden_size,
              "hidden_layers": 1}
    return save_net(randomize_(construct(MetaMLP, config, MLP.label), seed), config, directory)


def width_mult(role: str | None, shape: tuple[int, ...], base_width: float) -> float:
    """muP's width multiplier of a parameter: fan_in / base_width for hidden matrices (matrix-like), else 1."""
    return shape[1] / base_width if role == "matrix" else 1.0


def step_lr(group: dict, shape: tuple[int, ...]) -> float:
    """A parameter's muP-scaled lr: the group's own when the model is muP (routing set `lr_mult` and divided the
    lr by the model's width multiplier), else the group's lr over muLO's width multiplier fan_in / base_width."""
    if "lr_mult" in group:
        return group["lr"]
    return group["lr"] / width_mult(group.get("role"), shape, group["base_width"])


def clip_norm(g: Tensor, max_norm: float) -> Tensor:
    """g scaled to norm max_norm if larger (torch.nn.utils.clip_grad_norm_ on one tensor)."""
    return g * torch.clamp(max_norm / (torch.linalg.vector_norm(g) + 1e-6), max=1.0)


def mulo_direction(net: MetaMLP, p: Tensor, g: Tensor, state: dict, dims: tuple[int, int] | None,
                   decays: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """One tensor's muLO step before the learning rate (float32), advancing its accumulators and step count:
    d exp(EXP_MULT m) STEP_MULT, (d, m) = MLP(features)."""
    fac_g = F.update_accumulators_(state, g, dims, *decays)
    out = net(F.mulo_mlp_features(p, g, state, fac_g, dims, iteration=state["step"]))
    state["step"] += 1
    direction, magnitude = out[..., 0], out[..., 1]
    return direction * torch.exp(magnitude * EXP_MULT) * STEP_MULT


class MuLO(torch.optim.Optimizer):
    """muLO over param groups with keys lr, weight_decay, base_width, max_grad_norm and routing's role (none: no
    muP scaling) and lr_mult (a muP model's: lr is already scaled). State per parameter: step (int) and PyLO's
    mom, rms, fac_vec_row, fac_vec_col, fac_vec_v."""

    def __init__(self, params, net: MetaMLP, lr: float = 1.0, weight_decay: float = 0.0, base_width: float = 1.0,
                 max_grad_norm: float = 0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, base_width=base_width,
                                      max_grad_norm=max_grad_norm))
        for group in self.param_groups:
            names = group.get("names", [None] * len(group["params"]))
            for name, p in zip(names, group["params"]):
                if group.get("role") == "matrix" and "lr_mult" not in group and p.dim() != 2:
                    raise UserError(f"mulo scales hidden matrices by muP's fan_in and needs them 2-D; "
                                    f"{name or 'a matrix parameter'} has shape {tuple(p.shape)}")
        self.net = net
        self.decays = tuple(F.decays(d, o) for d, o in ((F.INITIAL_MOMENTUM_DECAYS, MOMENTUM_DECAY_OFFSETS),
                                                        (F.INITIAL_RMS_DECAYS, RMS_DECAY_OFFSETS),
                                                        (F.INITIAL_ADAFACTOR_DECAYS, ADAFACTOR_DECAY_OFFSETS)))

    @staticmethod
    def _dims(p: Tensor) -> tuple[int, int] | None:
        return F.factored_dims(tuple(F.as_features(p).shape))

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not self.state[p]:  # at the first step, not in __init__: under FSDP2 only p's owner steps it
                    self.state[p].update(step=0, **F.init_accumulators(p, self._dims(p)))
                if self.decays[0].device != p.device:
                    self.net.to(p.device)
                    self.decays = tuple(d.to(p.device) for d in self.decays)
                g = F.as_features(p.grad.float())
                if group["max_grad_norm"] > 0:
                    g = clip_norm(g, group["max_grad_norm"])
                update = mulo_direction(self.net, F.as_features(p.detach().float()), g, self.state[p], self._dims(p),
                                        self.decays)
                lr = step_lr(group, tuple(p.shape))
                p.add_(update.reshape(p.shape).to(p.dtype), alpha=-lr)
                if group["weight_decay"] > 0:
                    p.add_(p, alpha=-group["weight_decay"] * lr)
        return loss


def build_mulo(groups, cfg: MuLOConfig) -> torch.optim.Optimizer:
    return MuLO(groups, load_mulo_net(cfg.weights), lr=cfg.lr, weight_decay=cfg.weight_decay,
                base_width=cfg.base_width, max_grad_norm=cfg.max_grad_norm)


register(OptimizerSpec(
    name="mulo", config_cls=MuLOConfig, build=build_mulo, source="optbench",
    reference=f"Therien et al. 2024 (arXiv 2406.00153), small_fc_lopt (arXiv 2203.11860); {PYLO} with weights "
              f"{MLP.repo_id}",
    search_space={"lr": LogUniform(0.1, 10.0)},
    capabilities=Capabilities(fsdp="owner"),  # factored features and per-tensor norms
))
