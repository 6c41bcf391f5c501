"""The mixture-of-experts feed-forward layer: routers, dispatch to experts, router losses and load statistics.

Routers (each returns a `Routing`: which tokens every expert processes, and with what combine weight):
- token choice (Shazeer et al. 2017; Fedus et al. 2022, "Switch Transformers"; Mixtral): each token picks
  its top_k experts by router logit. No capacity limit, so no token is dropped (dropless, as llm-baselines).
- expert choice (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing"): each expert picks its
  `capacity` tokens with the highest router probability. Experts are balanced by construction, but a token
  may be taken by several experts or by none (dropped: it passes through on the residual stream only).
  The expert ranks tokens of the whole batch, future positions included, so a token's output depends on
  tokens after it: this leaks information across positions in a causal LM and makes the model's output
  depend on what else is in the batch. It is offered because the issue asks for it and llm-baselines has
  it (`ExpertChoiceMoE`, wired to its GPT-2 base model; its Llama MoE, the 520M preset's, is token choice).
Gate order: softmax_topk weighs each chosen (token, expert) pair by the full softmax probability (Switch,
Zhou et al.); topk_softmax renormalises each token's chosen probabilities to sum to 1, which equals a softmax
over the chosen experts' logits (Mixtral; llm-baselines' default).

Router losses of one layer, each as its paper defines it (the model weights and averages them over layers):
- load balance (Switch Transformer eq. 4): E * sum_i f_i P_i, with P_i the mean router probability of expert
  i and f_i the share of routed (token, expert) assignments that went to expert i. Dividing the assignments
  by their total (N * top_k) rather than by N keeps the minimum at 1.0 (a uniform router) for any top_k;
  llm-baselines' `load_balancing_loss` computes sum_i f_i^tok P_i (E times a mean) with f^tok the share of
  tokens sent to expert i (summing to k), which is k/E times this value (the same gradient direction).
- z-loss (Zoph et al. 2022, "ST-MoE", eq. 5): the mean over tokens of logsumexp(router logits)^2; identical
  to llm-baselines' `router_z_loss`.
- entropy: the mean per-token entropy of the router distribution, the "local entropy" of Mustafa et al. 2022
  (LIMoE), minimised to make routing decisive. llm-baselines' `entropy_reg` is LIMoE's global entropy
  instead (minus the entropy of the batch-mean distribution, a balance term that is negative).
Token choice has all three; expert choice no load balance (balanced by construction, and llm-baselines
computes router losses for token choice only).

Reference implementation read for the facts above: epfml/llm-baselines src/models/moe.py @ 4ace928d
(`MoE`, `ExpertChoiceMoE`, the router losses). Written anew here.

Experts are separate SwiGLU modules (an nn.ModuleList), each with its own gate/up/down nn.Linear, and a
layer gathers each expert's tokens (index_select), runs the expert, and scatter-adds the weighted result
(index_add). A grouped 3-D weight [E, out, in] with one batched matmul would be faster, but the matrix
optimizers (Muon, SOAP, Shampoo) see parameters as tensors: each expert's matrix must be its own 2-D
parameter so it is preconditioned on its own instead of mixed with the other experts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from optbench.models.layers import upcast
from optbench.models.llama import MLP

ROUTINGS = ("token_choice", "expert_choice")
GATE_ORDERS = ("softmax_topk", "topk_softmax")


@dataclass
class Routing:
    """One layer's routing of N tokens, grouped by expert: expert e processes `tokens` and `weights` at
    positions sum(sizes[:e]) .. sum(sizes[:e+1]) - 1."""

    tokens: torch.Tensor
    """(A,) token index of each (token, expert) assignment, grouped by expert."""
    weights: torch.Tensor
    """(A,) its combine weight."""
    sizes: list[int]
    """Assignments per expert (a host list: splitting needs the sizes on the host)."""
    load: torch.Tensor
    """(E,) the same counts as a tensor, for statistics without another host sync."""
    dropped: torch.Tensor
    """() the fraction of tokens that no expert took."""


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """Tokens each expert takes under expert choice: capacity_factor * n_tokens * top_k / n_experts, rounded
    down as Zhou et al. (k = n c / e) and llm-baselines do, and kept within [1, n_tokens]."""
    return min(n_tokens, max(1, int(capacity_factor * n_tokens * top_k / n_experts)))


def renormalize_per_token(tokens: torch.Tensor, weights: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Divide each weight by the sum of its token's weights: the chosen probabilities renormalised equal a
    softmax over the chosen experts' logits (topk_softmax)."""
    totals = torch.zeros(n_tokens, dtype=weights.dtype, device=weights.device).index_add(0, tokens, weights)
    return weights / totals[tokens]


def token_choice(logits: torch.Tensor, top_k: int, gate_order: str) -> Routing:
    """Each of the N tokens goes to the top_k experts of its (N, E) router logits."""
    n_tokens, n_experts = logits.shape
    probs = logits.softmax(dim=-1)
    gates, experts = probs.topk(top_k, dim=-1)  # (N, k) each; the same experts as the top-k logits
    experts = experts.flatten()
    order = experts.argsort(stable=True)  # group the N * k assignments by expert
    tokens, weights = order // top_k, gates.flatten()[order]
    if gate_order == "topk_softmax":
        weights = renormalize_per_token(tokens, weights, n_tokens)
    load = torch.bincount(experts, minlength=n_experts)
    return Routing(tokens, weights, load.tolist(), load, torch.zeros((), device=logits.device))


def expert_choice(logits: torch.Tensor, capacity: int, gate_order: str) -> Routing:
    """Each expert takes the `capacity` tokens to which the router gives it the highest probability."""
    n_tokens, n_experts = logits.shape
    probs = logits.softmax(dim=-1)
    gates, tokens = probs.t().topk(capacity, dim=-1)  # (E, capacity) each, already grouped by expert
    tokens, weights = tokens.flatten(), gates.flatten()
    if gate_order == "topk_softmax":
        weights = renormalize_per_token(tokens, weights, n_tokens)
    taken = torch.zeros(n_tokens, dtype=torch.bool, device=logits.device).index_fill(0, tokens, True)
    load = torch.full((n_experts,), capacity, device=logits.device)
    return Routing(tokens, weights, [capacity] * n_experts, load, 1.0 - taken.float().mean())


def load_balance_loss(probs: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's E * sum_i f_i P_i for (N, E) router probabilities and per-expert assignment counts;
    1.0 for a uniform router, up to E when one expert gets every token and all the probability."""
    f = load.float() / load.sum()
    return probs.size(-1) * (f * probs.mean(dim=0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss: mean over tokens of logsumexp(logits)^2, which keeps router logits small."""
    return torch.logsumexp(logits, dim=-1).square().mean()


def router_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-token entropy of the router distribution (LIMoE's local entropy): log E when undecided."""
    logp = logits.log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


def dispatch(x: torch.Tensor, experts: nn.ModuleList, routing: Routing) -> torch.Tensor:
    """Sum over each token's experts of weight * expert(token), for (N, d) tokens x.

    Every expert runs, on zero tokens if none chose it, so every expert weight gets a (zero) gradient and
    DDP finds no unused parameter.
    """
    out = torch.zeros_like(x)
    for expert, tokens, weights in zip(experts, routing.tokens.split(routing.sizes),
                                       routing.weights.split(routing.sizes)):
        y = expert(x.index_select(0, tokens)) * weights.unsqueeze(-1)
        out = out.index_add(0, tokens, y.to(out.dtype))
    return out


class MoEFeedForward(nn.Module):
    """A mixture of SwiGLU experts in place of the dense MLP, with optional always-on shared experts.

    Parameters: `router` (E x d), `experts.i.{gate,up,down}_proj`, `shared.j.{gate,up,down}_proj`.
    The last forward's router losses (unweighted, in `losses`) and load statistics (`load`, `dropped`)
    are kept as tensors for the model to collect.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        self.routing, self.gate_order = cfg.routing, cfg.gate_order
        self.top_k, self.capacity_factor = cfg.top_k, cfg.capacity_factor
        expert_cfg = dataclasses.replace(cfg, ffn_hidden=cfg.expert_dim)
        self.router = nn.Linear(cfg.n_embd, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(expert_cfg) for _ in range(cfg.n_experts))
        self.shared = nn.ModuleList(MLP(expert_cfg) for _ in range(cfg.n_shared_experts))
        self.losses: dict[str, torch.Tensor] = {}
        self.load: torch.Tensor | None = None
        self.dropped: torch.Tensor | None = None

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, E) logits in float32 (float64 stays) even under autocast: ST-MoE's selective precision, since bfloat16
        round-off in the router's softmax changes which experts win and destabilises training."""
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(upcast(x), upcast(self.router.weight))

    def route(self, logits: torch.Tensor) -> Routing:
        if self.routing == "token_choice":
            return token_choice(logits, self.top_k, self.gate_order)
        n_tokens, n_experts = logits.shape
        capacity = expert_capacity(n_tokens, n_experts, self.top_k, self.capacity_factor)
        return expert_choice(logits, capacity, self.gate_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        logits = self.router_logits(flat)
        routing = self.route(logits)
        out = dispatch(flat, self.experts, routing)
        for expert in self.shared:  # DeepSeekMoE's shared experts see every token, with weight 1
            out = out + expert(flat).to(out.dtype)
        self.losses = {"z_loss": z_loss(logits), "entropy": router_entropy(logits)}
        if self.routing == "token_choice":
            self.losses["load_balance"] = load_balance_loss(logits.softmax(dim=-1), routing.load)
        self.load, self.dropped = routing.load.detach(), routing.dropped.detach()
        return out.view_as(x)
