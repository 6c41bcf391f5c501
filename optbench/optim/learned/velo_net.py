"""VeLO's two networks (Metz et al. 2022, "VeLO: Training Versatile Learned Optimizers by Scaling Up",
arXiv 2211.09760), with the tensor names and constructor arguments of PyLO's modules, so PyLO's published
weights (hub repos Pauljanson002/VeLO_RNN and Pauljanson002/VeLO_MLP) load unchanged:
    pylo/models/VeLO_RNN.py  commit 467d3e96f50a63dadf36cd36a00d63da70225da3
    pylo/models/VeLO_MLP.py  commit e9c898b9e204de2c3222e2f54dc46f032c0ee242
(ports of learned_optimization's research/general_lopt/hyper_v2.py, HyperV2 with lstm_hidden_size=512,
param_inits=256, ff_hidden_size=4, ff_hidden_layers=2).

VeLORNN, once per step over all tensors at once: per-tensor features x (n, 30) ->
    x <- final_mix(x) + max over tensors of relu(mix_layer2(x))     (mix_layer1 exists but is unused, as in
                                                                      the original)
    h, c <- LSTM(x, (h, c))                                         (Haiku's gate order i, g, f, o; f + 1)
    controls = rnn_to_controls(h) (n, 256),  lr_mult = step_size(h) (n,)
VeLOMLP, the per-parameter network of each tensor i: its weights are 100 x the mean over the 256 stored
weight sets, weighted by controls[i] (`interpolate`); it maps the 30 per-parameter features to
(direction, magnitude, unused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from optbench.optim.learned.weights import Published

RNN = Published("VeLO_RNN", "Pauljanson002/VeLO_RNN")
MLP = Published("VeLO_MLP", "Pauljanson002/VeLO_MLP")
INTERPOLATION_MULT = 100.0


class LSTM(nn.Module):
    """One linear map of [x, h] to the four gates (PyLO's / Haiku's LSTM)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(2 * input_size, 4 * hidden_size)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h_prev, c_prev = state
        i, g, f, o = self.linear(torch.cat((x, h_prev), dim=-1)).chunk(4, -1)
        c = torch.sigmoid(f + 1) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class VeLORNN(nn.Module):
    """The per-tensor LSTM: features of every tensor -> MLP mixing controls and a step-size multiplier."""

    def __init__(self, input_size: int = 30, lstm_hidden_size: int = 512, param_inits: int = 256,
                 mix_layers: bool = True):
        super().__init__()
        self.mix_layers = mix_layers
        self.mix_layer1 = nn.Linear(input_size, lstm_hidden_size)
        self.mix_layer2 = nn.Linear(input_size, lstm_hidden_size)
        self.final_mix_layer = nn.Linear(input_size, lstm_hidden_size)
        self.lstm = LSTM(input_size=lstm_hidden_size, hidden_size=lstm_hidden_size)
        self.rnn_to_controls = nn.Linear(lstm_hidden_size, param_inits)
        self.step_size = nn.Linear(lstm_hidden_size, 1)
        self.lstm_init_state = nn.ParameterList([nn.Parameter(torch.zeros(1, lstm_hidden_size)),
                                                 nn.Parameter(torch.zeros(1, lstm_hidden_size))])

    @property
    def input_size(self) -> int:
        return self.final_mix_layer.in_features

    def initial_state(self, n: int) -> tuple[Tensor, Tensor]:
        """The learned initial (h, c), one row per tensor."""
        return self.lstm_init_state[0].detach().repeat(n, 1), self.lstm_init_state[1].detach().repeat(n, 1)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        if self.mix_layers:
            shared = torch.max(F.relu(self.mix_layer2(x)), dim=0, keepdim=True).values
            x = self.final_mix_layer(x) + shared
        out, state = self.lstm(x, state)
        return self.rnn_to_controls(out), self.step_size(out).squeeze(-1), state


class VeLOMLP(nn.Module):
    """The stored per-parameter MLPs (`*_` tensors: one set per `param_inits`), mixed per tensor by the LSTM's
    controls. The un-suffixed tensors are PyLO's scratch copy of the last mixed MLP: kept so state dicts
    match PyLO's, never read here (weights files may omit them)."""

    def __init__(self, param_inits: int = 256, input_size: int = 30, hidden_size: int = 4, hidden_layers: int = 1,
                 output_size: int = 3):
        super().__init__()
        self.hidden_layers = hidden_layers
        self.input_weights_ = nn.Parameter(torch.zeros(param_inits, hidden_size, input_size))
        self.input_bias_ = nn.Parameter(torch.zeros(param_inits, hidden_size))
        self.hidden_weights_ = nn.ParameterList(
            [nn.Parameter(torch.zeros(param_inits, hidden_size, hidden_size)) for _ in range(hidden_layers)])
        self.hidden_bias_ = nn.ParameterList(
            [nn.Parameter(torch.zeros(param_inits, hidden_size)) for _ in range(hidden_layers)])
        self.output_weights_ = nn.Parameter(torch.zeros(param_inits, output_size, hidden_size))
        self.output_bias_ = nn.Parameter(torch.zeros(param_inits, output_size))
        self.input_weights = nn.Parameter(torch.zeros(hidden_size, input_size))
        self.input_bias = nn.Parameter(torch.zeros(hidden_size))
        self.hidden_weights = nn.ParameterList(
            [nn.Parameter(torch.zeros(hidden_size, hidden_size)) for _ in range(hidden_layers)])
        self.hidden_bias = nn.ParameterList([nn.Parameter(torch.zeros(hidden_size)) for _ in range(hidden_layers)])
        self.output_weights = nn.Parameter(torch.zeros(output_size, hidden_size))
        self.output_bias = nn.Parameter(torch.zeros(output_size))

    def optional_keys(self) -> set[str]:
        """The scratch tensors: a weights file may leave them out."""
        hidden = {f"hidden_{kind}.{i}" for kind in ("weights", "bias") for i in range(self.hidden_layers)}
        return {"input_weights", "input_bias", "output_weights", "output_bias"} | hidden

    @property
    def input_size(self) -> int:
        return self.input_weights_.shape[-1]

    def stored_layers(self) -> list[tuple[Tensor, Tensor]]:
        """(weights, bias) of each layer, with the leading param_inits dimension."""
        return ([(self.input_weights_, self.input_bias_)] + list(zip(self.hidden_weights_, self.hidden_bias_))
                + [(self.output_weights_, self.output_bias_)])

    def interpolate(self, controls: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each tensor's MLP: 100 x mean_k controls[:, k] x stored_k, per layer, batched over the n tensors:
        [(weights (n, out, in), bias (n, out))]."""
        n, k = controls.shape
        mixed = []
        for weight, bias in self.stored_layers():
            mixed.append(tuple((controls @ t.reshape(k, -1)).reshape((n,) + t.shape[1:]) / k * INTERPOLATION_MULT
                               for t in (weight, bias)))
        return mixed

    @staticmethod
    def apply(layers: list[tuple[Tensor, Tensor]], features: Tensor) -> Tensor:
        """One tensor's MLP ([(weights, bias)] for it) on its features (..., 30) -> (..., 3); ReLU between."""
        x = features
        for i, (weight, bias) in enumerate(layers):
            x = F.linear(x, weight, bias)
            if i < len(layers) - 1:
                x = F.relu(x)
        return x
