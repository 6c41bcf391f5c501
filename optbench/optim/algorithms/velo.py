"""VeLO (Metz, Harrison, Freeman, Merchant, Beyer, Bradbury, Agrawal, Poole, Mordatch, Roberts, Sohl-Dickstein,
2022, "VeLO: Training Versatile Learned Optimizers by Scaling Up", arXiv 2211.09760): a learned optimizer
meta-trained for 4000 TPU-months. A per-tensor LSTM reads summaries of every tensor, the training loss history
and the fraction of the run done, and outputs for each tensor the weights of a small per-parameter MLP
(hypernetwork) and a step-size multiplier; the MLP maps 30 per-parameter features to a direction d and a
magnitude m, and

    p <- p - lr * lr_mult * RMS(p) * d * exp(0.001 m) * 0.001        (then p <- p (1 - lr wd))

Source: optbench, pure PyTorch, following PyLO (Belilovsky-Lab/pylo, arXiv 2506.10315; BSD-3):
    pylo/optim/Velo_naive.py  commit b221435eed626e73d9bf69b87d49ac7cb2fa8202 (the pure-PyTorch VeLO with square
                              matrices' factored dimensions fixed, safe rsqrt in the factored statistics, weight
                              decay; the CUDA VeLO_CUDA of pylo/optim/velo_cuda.py computes the same)
    pylo/models/VeLO_RNN.py, VeLO_MLP.py (see optbench/optim/learned/velo_net.py)
which port google/learned_optimization's research/general_lopt/hyper_v2.py (HyperV2). Published weights:
hub repos Pauljanson002/VeLO_RNN and Pauljanson002/VeLO_MLP (PyLO's defaults), loaded with safetensors.

Deliberate differences from PyLO:
- lr defaults to 1.0, not PyLO's constructor default 1e-3: VeLO itself has no learning rate (it is PyLO's lr=1),
  and PyLO's own LLM runs sweep lr around 1 (pylo_examples, language_model_pretraining/jobs: 0.01 ... 16).
- The LSTM's rows follow the parameter order; PyLO flips them and indexes from the end. The LSTM is row-wise and
  the mixing layer takes a max over rows, so the numbers are the same.
- A parameter without a gradient still runs through the LSTM (its features do not read gradients) and is left
  unchanged; PyLO's VeLO fails on it.
- The horizon: `set_horizon(total_steps)` before the first step sets both PyLO's `num_steps` uses (the fraction
  feature and the loss EMAs' half-lives); called on a resumed run it only moves the fraction's horizon, so a
  resume stays bit-identical.
- The loss is given by the trainer's `observe_loss` (or a closure) rather than `step(loss)`.
Everything the LSTM and the MLP see is computed in float32; state (LSTM h and c, loss EMAs, step, horizon,
per-parameter accumulators) is plain tensors in the state dict.
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
from optbench.optim.learned.velo_net import INTERPOLATION_MULT, MLP, RNN, VeLOMLP, VeLORNN
from optbench.optim.learned.weights import construct, load_net, locate, randomize_, save_net
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import LogUniform

PYLO = "PyLO (Belilovsky-Lab/pylo) pylo/optim/Velo_naive.py@b221435e"
DEFAULT_WEIGHTS = f"{RNN.repo_id},{MLP.repo_id}"
EXP_MULT = 0.001
STEP_MULT = 0.001
GRAD_CLIP = 1000.0
WEIGHTS_HINT = (f"get them with `hf download {RNN.repo_id} --local-dir DIR/{RNN.label}` and "
                f"`hf download {MLP.repo_id} --local-dir DIR/{MLP.label}`, then pass optim.weights=DIR")


@dataclass
class VeLOConfig(OptimConfig):
    name: str = "velo"
    lr: float = 1.0
    """A multiplier on VeLO's step (PyLO's lr); 1 is the published optimizer as meta-trained."""
    weight_decay: float = 0.0
    """Decoupled: p <- p (1 - lr wd) after each step (PyLO's; VeLO was meta-trained without)."""
    weights: str = DEFAULT_WEIGHTS
    """A directory holding VeLO_RNN/ and VeLO_MLP/ (each config.json + model.safetensors, as the hub repos),
    or two comma-separated sources 'RNN,MLP', each a directory or a hub repo id (default: PyLO's repos)."""
    num_steps: int = 10000
    """The horizon until the trainer's `set_horizon` gives the run's length (PyLO's default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_steps > 0, f"optim.num_steps={self.num_steps} must be positive")
        check(bool(self.weights.strip()), "optim.weights must name a directory or hub repo ids")


def load_velo_nets(weights: str) -> tuple[VeLORNN, VeLOMLP]:
    """PyLO's two VeLO networks from `weights` (see VeLOConfig.weights); a one-line UserError if absent."""
    sources = [s.strip() for s in weights.split(",")]
    if len(sources) == 1:
        rnn_dir, mlp_dir = (locate(sources[0], net, subfolder=True, hint=WEIGHTS_HINT) for net in (RNN, MLP))
    elif len(sources) == 2:
        rnn_dir, mlp_dir = (locate(s, net, subfolder=False, hint=WEIGHTS_HINT) for s, net in zip(sources, (RNN, MLP)))
    else:
        raise UserError(f"optim.weights='{weights}' must be one directory or two sources 'RNN,MLP'")
    rnn = load_net(rnn_dir, VeLORNN, f"VeLO's {RNN.label}")
    mlp = load_net(mlp_dir, VeLOMLP, f"VeLO's {MLP.label}")
    check(rnn.input_size == F.LSTM_FEATURES and mlp.input_size == F.VELO_MLP_FEATURES,
          f"VeLO's weights take {rnn.input_size} LSTM and {mlp.input_size} MLP inputs; VeLO computes "
          f"{F.LSTM_FEATURES} and {F.VELO_MLP_FEATURES}")
    check(rnn.rnn_to_controls.out_features == mlp.input_weights_.shape[0] and mlp.output_bias_.shape[-1] >= 2,
          f"VeLO's {RNN.label} and {MLP.label} do not fit together (param_inits "
          f"{rnn.rnn_to_controls.out_features} vs {mlp.input_weights_.shape[0]})")
    return rnn, mlp


def write_random_weights(directory, seed: int = 0, lstm_hidden_size: int = 512, param_inits: int = 256,
                         hidden_size: int = 4) -> Path:
    """Deterministic random VeLO weights in the published layout (DIR/VeLO_RNN, DIR/VeLO_MLP), for tests:
    every mechanism runs, nothing is meta-trained. The stored MLPs are scaled by sqrt(param_inits) / 100 so
    that their mix (100 x a mean over param_inits) has O(1 / fan_in) variance and steps stay small, not
    exploding. Returns DIR, for optim.weights."""
    directory = Path(directory)
    rnn_config = {"input_size": F.LSTM_FEATURES, "lstm_hidden_size": lstm_hidden_size, "param_inits": param_inits,
                  "mix_layers": True}
    mlp_config = {"param_inits": param_inits, "input_size": F.VELO_MLP_FEATURES, "hidden_size": hidden_size,
                  "hidden_layers": 1, "output_size": 3}
    rnn = randomize_(construct(VeLORNN, rnn_config, RNN.label), seed * 2)
    mlp = randomize_(construct(VeLOMLP, mlp_config, MLP.label), seed * 2 + 1)
    with torch.no_grad():
        for weight, _ in mlp.stored_layers():
            weight.mul_(param_inits ** 0.5 / INTERPOLATION_MULT)
    save_net(rnn, rnn_config, directory / RNN.label)
    save_net(mlp, mlp_config, directory / MLP.label)
    return directory


def velo_direction(p: Tensor, g: Tensor, state: dict[str, Tensor], layers: list[tuple[Tensor, Tensor]],
                   lr_mult: Tensor, dims: tuple[int, int] | None, decays: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """One tensor's VeLO step (to subtract, times lr) in float32, advancing its accumulators:
    lr_mult RMS(p) d exp(EXP_MULT m) STEP_MULT, (d, m) = its MLP(features)."""
    g = torch.clip(g, -GRAD_CLIP, GRAD_CLIP)
    fac_g = F.update_accumulators_(state, g, dims, *decays)
    out = VeLOMLP.apply(layers, F.velo_mlp_features(p, g, state, fac_g, dims))
    direction, magnitude = out[..., 0], out[..., 1]
    param_scale = torch.sqrt(torch.mean(p ** 2) + 1e-9)
    return lr_mult * (param_scale * (direction * torch.exp(magnitude * EXP_MULT) * STEP_MULT))


class VeLO(torch.optim.Optimizer):
    """VeLO over param groups with keys lr and weight_decay. Per-parameter state: mom, rms, fac_vec_row,
    fac_vec_col, fac_vec_v (PyLO's names); global state (`velo` in the state dict): step, num_steps, lstm_h,
    lstm_c and the loss buffer. Needs the loss each step: `observe_loss(loss)` before `step()`, or a closure."""

    def __init__(self, params, rnn: VeLORNN, mlp: VeLOMLP, lr: float = 1.0, weight_decay: float = 0.0,
                 num_steps: int = 10000):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.rnn, self.mlp = rnn, mlp
        # VeLO's decays are the initial ones (PyLO's offsets default to 0: none were meta-learned)
        self.decays = tuple(F.decays(d, (0.0,) * len(d)) for d in
                            (F.INITIAL_MOMENTUM_DECAYS, F.INITIAL_RMS_DECAYS, F.INITIAL_ADAFACTOR_DECAYS))
        self._observed: Tensor | None = None
        params = self._params()
        device = params[0].device if params else torch.device("cpu")
        for p in params:
            self.state[p].update(F.init_accumulators(p, self._dims(p)))
        h, c = rnn.initial_state(len(params))
        self.velo_state = {"step": torch.zeros((), dtype=torch.int64), "num_steps": torch.tensor(int(num_steps)),
                           "lstm_h": h, "lstm_c": c, **F.LossBuffer.init(num_steps)}
        self._to(device)

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @staticmethod
    def _dims(p: Tensor) -> tuple[int, int] | None:
        return F.factored_dims(tuple(F.as_features(p).shape), transposed_ties=True)

    def _to(self, device: torch.device) -> None:
        self.rnn.to(device)
        self.mlp.to(device)
        self.decays = tuple(d.to(device) for d in self.decays)
        self.velo_state = {key: value.to(device) for key, value in self.velo_state.items()}

    def set_horizon(self, total_steps: int) -> None:
        """The run's length: the fraction-trained feature's horizon and, before the first step, the loss EMAs'
        half-lives (10 steps to the horizon)."""
        total = int(total_steps)
        if total <= 0:
            raise ValueError(f"VeLO's horizon must be positive, got {total_steps}")
        device = self.velo_state["step"].device
        if int(self.velo_state["step"]) == 0:
            self.velo_state.update(F.LossBuffer.init(total, device))
        self.velo_state["num_steps"] = torch.tensor(total, device=device)

    def observe_loss(self, loss: float | Tensor) -> None:
        """The training loss of the batch whose gradients the next `step()` uses."""
        loss = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        self._observed = loss.to(device=self.velo_state["step"].device, dtype=torch.float32).reshape(())

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["velo"] = {key: value.clone() for key, value in self.velo_state.items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        if "velo" not in state_dict:
            raise ValueError("not a VeLO optimizer state: it has no 'velo' entry")
        saved = state_dict.pop("velo")
        super().load_state_dict(state_dict)
        device = self.velo_state["step"].device
        self.velo_state = {key: value.clone().to(device) for key, value in saved.items()}
        self._observed = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        if loss is not None:
            self.observe_loss(loss)
        if self._observed is None:
            raise RuntimeError("VeLO reads the training loss: call observe_loss(loss) before step(), or pass a closure")
        observed, self._observed = self._observed, None
        params = self._params()
        if params and params[0].device != self.velo_state["step"].device:
            self._to(params[0].device)
        s = self.velo_state
        F.LossBuffer.update_(s, observed)
        loss_features = F.LossBuffer.features(s)
        fraction = F.fractional_tanh_embed(int(s["step"]) / int(s["num_steps"])).to(s["step"].device)
        rows = [F.lstm_tensor_features(F.as_features(p.detach().float()), self.state[p]["mom"], self.state[p]["rms"],
                                       fraction, loss_features, F.tensor_rank(tuple(p.shape))) for p in params]
        controls, lr_mult, (s["lstm_h"], s["lstm_c"]) = self.rnn(torch.stack(rows), (s["lstm_h"], s["lstm_c"]))
        layers = self.mlp.interpolate(controls)
        s["step"] = s["step"] + 1
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p32 = F.as_features(p.detach().float())
                    update = velo_direction(p32, F.as_features(p.grad.float()), self.state[p],
                                            [(w[i], b[i]) for w, b in layers], lr_mult[i], self._dims(p), self.decays)
                    p.add_(update.reshape(p.shape).to(p.dtype), alpha=-group["lr"])
                    if group["weight_decay"] > 0:
                        p.add_(p, alpha=-group["weight_decay"] * group["lr"])
                i += 1
        return loss


def build_velo(groups, cfg: VeLOConfig) -> torch.optim.Optimizer:
    rnn, mlp = load_velo_nets(cfg.weights)
    return VeLO(groups, rnn, mlp, lr=cfg.lr, weight_decay=cfg.weight_decay, num_steps=cfg.num_steps)


register(OptimizerSpec(
    name="velo", config_cls=VeLOConfig, build=build_velo, source="optbench",
    reference=f"Metz et al. 2022 (arXiv 2211.09760); {PYLO} with weights {RNN.repo_id} + {MLP.repo_id}",
    search_space={"lr": LogUniform(0.1, 10.0)},
    capabilities=Capabilities(
        needs_horizon=True, observes_loss=True, fsdp="refused",
        fsdp_refusal="its LSTM reads summaries of every tensor at once (a max over tensors), which no rank holds"),
))
