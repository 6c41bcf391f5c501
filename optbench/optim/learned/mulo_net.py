"""muLO's per-parameter MLP (Therien et al. 2024, "muLO: Compute-Efficient Meta-Generalization of Learned
Optimizers", arXiv 2406.00153): small_fc_lopt (Metz et al. 2022, arXiv 2203.11860), an MLP from 39 features
per parameter to (direction, magnitude), meta-trained under muP.

Same tensor names and constructor arguments as PyLO's module (pylo/models/Meta_MLP.py, commit
d834b6acfabb4716b6cee530974946da095fec22), so PyLO's published weights (hub repo btherien/mulo: input_size
39, hidden_size 32, hidden_layers 1) load unchanged: network.input, network.linear_<i>, network.output.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from optbench.optim.learned.weights import Published

MLP = Published("mulo", "btherien/mulo")
ENTRIES_PER_CHUNK = 1 << 20


class MetaMLP(nn.Module):
    """input -> ReLU -> (linear_i -> ReLU) x hidden_layers -> output (2: direction, magnitude)."""

    def __init__(self, input_size: int = 39, hidden_size: int = 32, hidden_layers: int = 1):
        super().__init__()
        layers = [("input", nn.Linear(input_size, hidden_size)), ("relu_input", nn.ReLU())]
        for i in range(hidden_layers):
            layers += [(f"linear_{i}", nn.Linear(hidden_size, hidden_size)), (f"relu_{i}", nn.ReLU())]
        layers.append(("output", nn.Linear(hidden_size, 2)))
        self.network = nn.Sequential(OrderedDict(layers))

    @property
    def input_size(self) -> int:
        return self.network.input.in_features

    def forward(self, x: Tensor) -> Tensor:
        """Evaluated on at most ENTRIES_PER_CHUNK entries at a time: the 32-wide hidden activations of a whole
        embedding table (38.6M entries in GPT-2) would otherwise need about 10 GB."""
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] <= ENTRIES_PER_CHUNK:
            return self.network(x)
        return torch.cat([self.network(chunk) for chunk in flat.split(ENTRIES_PER_CHUNK)]).view(*x.shape[:-1], -1)
