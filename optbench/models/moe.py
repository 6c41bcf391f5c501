"""Mixture of experts on the Llama backbone: the dense SwiGLU of every `moe_every`-th layer becomes a
`MoEFeedForward` (optbench/models/moe_routing.py: routers, dispatch, router losses).

Follows the MoE of EPFL's optimizer benchmark (Semenov, Pagliardini & Jaggi 2025, "Benchmarking Optimizers
for Large Language Model Pretraining", arXiv 2509.01440), whose code is epfml/llm-baselines: src/models/moe.py
@ 4ace928d (token- and expert-choice layers, router losses) and src/models/mup.py @ c8a5105d (router losses
summed over layers, each times its factor / n_layer). Shared experts follow DeepSeekMoE (Dai et al. 2024);
upcycling from a dense checkpoint follows Komatsuzaki et al. 2022 (optbench/models/upcycle.py).

Differences from llm-baselines, each deliberate: shared experts are extra experts (llm-baselines counts them
within moe_num_experts); expert choice's capacity has a top_k factor (capacity_factor * tokens * top_k / E, so
capacity_factor=1 costs what token choice costs); router losses are defined as their papers do (see
moe_routing.py) and their layer mean is what the weights multiply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.errors import check, check_choice
from optbench.models.llama import Llama, LlamaConfig
from optbench.models.moe_routing import GATE_ORDERS, ROUTINGS, MoEFeedForward
from optbench.models.registry import register
from optbench.models.upcycle import upcycle

LOSS_NAMES = {"load_balance": "load_balance_weight", "z_loss": "z_loss_weight", "entropy": "entropy_weight"}
"""Router loss -> the config key weighting it; logged as router_<loss>."""


@dataclass
class MoEConfig(LlamaConfig):
    """Llama with mixture-of-experts feed-forward layers; defaults are llm-baselines' (8 experts, top-2,
    topk_softmax) and the router-loss weights of Switch Transformer and ST-MoE."""

    name: str = "moe"
    n_experts: int = 8
    """Routed experts per MoE layer."""
    top_k: int = 2
    """Experts per token (token choice); under expert choice it scales the capacity."""
    routing: str = "token_choice"
    """token_choice: each token picks top_k experts | expert_choice: each expert picks `capacity` tokens
    (Zhou et al. 2022; non-causal: an expert ranks the whole batch, future positions included)."""
    gate_order: str = "topk_softmax"
    """topk_softmax: a token's chosen weights renormalised to sum to 1 (Mixtral) | softmax_topk: the full
    softmax probabilities (Switch). With top_k=1, topk_softmax gives weight 1 and the router learns only
    from the router losses."""
    capacity_factor: float = 1.0
    """Expert choice: each expert takes capacity_factor * tokens * top_k / n_experts tokens of the batch."""
    n_shared_experts: int = 0
    """Always-on experts added to every token with weight 1 (DeepSeekMoE), besides the routed ones."""
    expert_hidden: int | None = None
    """Each expert's SwiGLU width; None: the dense Llama width (ffn_dim); smaller for fine-grained experts."""
    moe_every: int = 1
    """Layers 0-indexed k-1, 2k-1, ... are MoE (every k-th layer, as GShard's every other); the rest dense."""
    load_balance_weight: float = 0.01
    """Weight of the Switch load-balancing loss (Switch Transformer's alpha = 1e-2), averaged over layers."""
    z_loss_weight: float = 0.001
    """Weight of the router z-loss (ST-MoE's c_z = 1e-3), averaged over layers."""
    entropy_weight: float = 0.0
    """Weight of the mean per-token router entropy (LIMoE's local entropy), averaged over layers."""
    upcycle_from: str | None = None
    """Start from a dense llama run directory or checkpoint file: its weights everywhere, its MLP copied into
    every expert, the router fresh (sparse upcycling). Used at the start of training only, never on resume."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.n_experts > 0, f"model.n_experts={self.n_experts} must be positive")
        check(1 <= self.top_k <= self.n_experts,
              f"model.top_k={self.top_k} must be between 1 and model.n_experts={self.n_experts}")
        check_choice("model.routing", self.routing, ROUTINGS)
        check_choice("model.gate_order", self.gate_order, GATE_ORDERS)
        check(self.capacity_factor > 0, f"model.capacity_factor={self.capacity_factor} must be positive")
        check(self.n_shared_experts >= 0, f"model.n_shared_experts={self.n_shared_experts} must be >= 0")
        check(self.expert_hidden is None or self.expert_hidden > 0,
              f"model.expert_hidden={self.expert_hidden} must be positive")
        check(1 <= self.moe_every <= self.n_layer,
              f"model.moe_every={self.moe_every} must be between 1 and model.n_layer={self.n_layer}")
        for key in LOSS_NAMES.values():
            check(getattr(self, key) >= 0, f"model.{key}={getattr(self, key)} must be >= 0")

    @property
    def expert_dim(self) -> int:
        return self.ffn_dim if self.expert_hidden is None else self.expert_hidden

    def is_moe_layer(self, layer: int) -> bool:
        return (layer + 1) % self.moe_every == 0

    @property
    def active_experts(self) -> float:
        """Routed experts per token on average: top_k, or capacity_factor * top_k under expert choice."""
        if self.routing == "token_choice":
            return self.top_k
        return min(self.n_experts, self.top_k * self.capacity_factor)


@register("moe", MoEConfig, "Mixture of experts on Llama: token or expert choice, shared experts, router "
                            "losses, upcycling from a dense llama")
class MoE(Llama):
    """Llama whose feed-forward layers are mixtures of experts (every `moe_every`-th layer)."""

    cfg: MoEConfig

    def make_ffn(self, cfg: MoEConfig, layer: int) -> torch.nn.Module:
        return MoEFeedForward(cfg) if cfg.is_moe_layer(layer) else super().make_ffn(cfg, layer)

    def moe_layers(self) -> list[MoEFeedForward]:
        return [block.mlp for block in self.layers if isinstance(block.mlp, MoEFeedForward)]

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """Each router loss with a positive weight, averaged over MoE layers, times its weight.

        Averaged (as llm-baselines' factor / n_layer does) rather than summed, so a weight means the same
        at any depth and with any `moe_every`.
        """
        layers = self.moe_layers()
        if not layers[0].losses:
            return {}
        losses = {}
        for loss, key in LOSS_NAMES.items():
            weight = getattr(self.cfg, key)
            if weight > 0 and loss in layers[0].losses:
                losses[f"router_{loss}"] = weight * torch.stack([m.losses[loss] for m in layers]).mean()
        return losses

    def forward_stats(self) -> dict[str, float]:
        """Expert load of the last forward, averaged over MoE layers: the busiest and the idlest expert's
        share of routed assignments times n_experts (1.0 is perfectly balanced), and the fraction of tokens
        no expert took (expert choice; 0 under token choice). One host sync, here, not in forward."""
        layers = self.moe_layers()
        if layers[0].load is None:
            return {}
        load = torch.stack([m.load for m in layers]).float()  # (layers, E)
        share = load / load.sum(dim=-1, keepdim=True) * load.size(-1)
        dropped = torch.stack([m.dropped for m in layers])
        stats = torch.stack([share.max(dim=-1).values.mean(), share.min(dim=-1).values.mean(), dropped.mean()])
        load_max, load_min, dropped_frac = stats.tolist()
        return {"moe_load_max": load_max, "moe_load_min": load_min, "moe_dropped_frac": dropped_frac}

    def load_initial_weights(self) -> None:
        if self.cfg.upcycle_from is not None:
            upcycle(self, self.cfg.upcycle_from)

    def num_active_params(self) -> int:
        """Every non-embedding parameter less the routed experts a token does not use (so FLOPs and MFU count
        what a token computes)."""
        cfg = self.cfg
        per_expert = sum(p.numel() for p in self.moe_layers()[0].experts[0].parameters())
        idle = (cfg.n_experts - cfg.active_experts) * per_expert * len(self.moe_layers())
        return self.num_params(embeddings=False) - idle
