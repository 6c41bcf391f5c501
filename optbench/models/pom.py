"""The Polynomial Mixer (PoM): a token mixer whose cost is linear in the context length (`model.mixer=pom`).

Picard, Dufour et al., "PoM: Efficient Image and Video Generation with the Polynomial Mixer",
arXiv 2411.12663 (2024). For tokens x_1..x_n and degree k,

    PoM(X) = W_o [ sigmoid(W_s X) * H(X) 1/n ],
    H(x)   = [ h(W_1 x); h(W_1 x) h(W_2 x); ...; h(W_1 x) ... h(W_k x) ],   h = GELU,

with products taken channel by channel: each token is lifted to monomials of degree 1..k of k learned
projections of itself, the lifts are averaged over the sequence into one state shared by every token,
and each token reads that state through its own sigmoid gate before the output projection W_o.
Each W_m has `expand * d` rows, so the state has k * expand * d channels. For a language model the
average at position t runs over positions 0..t only: a cumulative mean, O(T) per sequence where
attention's score matrix is O(T^2), and at inference a running mean of fixed size.

Reference code read (facts only, none copied):
- the authors' davidpicard/HoMM, src/model/network/layers.py (`HoM`, `high_order_aggregation_`),
  commit 01cab888f01e3aa3007a2f780cec5f15eb574a43: the formula above with GELU;
- the modded-nanogpt Hydra fork vayvi/modded-nanogpt-SOAP-pom, models/pom.py and models/gpt.py
  (`PoM`, `CausalSelfPoM`), commits 29b9a18f3bcd0944fd6c85a29d6c7da4d63ebd1a and
  20ca57da3739c35f2b36904c182f74c886ca1d3c: the causal GPT-2 use, degree 2, expansion 2, no biases.
Differences: the fork takes the causal mean with a T x T lower-triangular mask; a cumulative sum
divided by the count gives the same numbers in O(T). The fork's grouped projection (`n_head` groups)
is left out: its GPT-2 runs use one group, which is the paper's layer. The later compact PoM
(davidpicard/pom, pom/pom.py; arXiv 2604.06129: one projection, learned power-series coefficients,
per-head scalar gates) is a different layer and not this one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from optbench.models.layers import upcast


def polynomial_lift(z: torch.Tensor, degree: int) -> torch.Tensor:
    """H(x) from z = [W_1 x; ...; W_k x] (last dim split into k = `degree` equal factors): the running
    products h_1, h_1 h_2, ..., h_1 ... h_k of the GELU'd factors side by side, as wide as z."""
    factors = F.gelu(z).chunk(degree, dim=-1)
    monomials = [factors[0]]
    for factor in factors[1:]:
        monomials.append(monomials[-1] * factor)
    return torch.cat(monomials, dim=-1)


def causal_mean(h: torch.Tensor) -> torch.Tensor:
    """Row t of (B, T, C) `h` replaced by the mean of rows 0..t.

    Summed in float32 and cast back: a bfloat16 running sum over a thousand positions keeps too few
    bits for the later rows' means (as RMSNorm squares in float32).
    """
    total = upcast(h).cumsum(dim=1)
    count = torch.arange(1, h.size(1) + 1, device=h.device, dtype=total.dtype).unsqueeze(-1)
    return (total / count).type_as(h)


def select(gate_logits: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """Each token's view of the shared state: a sigmoid gate per channel, sigmoid(W_s x) * state."""
    return torch.sigmoid(gate_logits) * state


class PolynomialMixer(nn.Module):
    """Causal PoM over (B, T, dim) inputs, called as mixer(x) in place of self-attention.

    `po_proj` stacks W_1..W_k (one matmul), `se_proj` is the gate W_s, `c_proj` the output W_o; the
    output projection carries GPT-2's name so `init_weights` scales it as a residual branch.
    """

    def __init__(self, dim: int, degree: int, expand: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.degree = degree
        width = degree * expand * dim
        self.po_proj = nn.Linear(dim, width, bias=bias)
        self.se_proj = nn.Linear(dim, width, bias=bias)
        self.c_proj = nn.Linear(width, dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = causal_mean(polynomial_lift(self.po_proj(x), self.degree))
        return self.resid_dropout(self.c_proj(select(self.se_proj(x), state)))
