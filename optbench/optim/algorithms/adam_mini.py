"""Adam-mini (Zhang, Chen, Li, Ding, Chen, Ye, Luo & Sun, 2024, "Adam-mini: Use Fewer Learning Rates To Gain
More", arXiv 2406.16793).

AdamW whose second moment is one scalar per block of parameters instead of one per parameter: each block's
v is an EMA of the mean squared gradient over the block, so the state is ~1x the parameters instead of 2x.
The blocks follow the Hessian's block structure in Transformers (paper Section 2.3 / Algorithm 3):

    embedding tables and output head   one block per token row
    query and key projections          one block per attention head
    value, attention output, MLP       one block per output neuron (row)
    norm gains                         one block per tensor
    biases                             one block per element (plain AdamW)

Reference: the authors' package adam-mini==1.1.1 (`adam_mini/adam_mini.py`, "version 1.1.1"), whose update
we match to rtol 1e-5 on both optbench model families (tests/optim/test_adam_mini.py). That package assigns
blocks by substrings of parameter names it knows (q_proj, wq, mlp, embd, ...). We assign them from optbench's
routing roles plus name patterns for both families, which changes three GPT-2 cases that the package's
name lists miss: the fused `attn.c_attn` (3d x d) is split into q, k and v (q and k per head, v per neuron:
the package would give the whole matrix one scalar), `attn.c_proj` is per neuron like Llama's `o_proj`, and
the position table `wpe` is per row like every embedding (the package: one scalar per tensor for both).
Weight decay is routing's (norms, biases never), which equals the package's name rule on these models.

Heads: the per-head blocks of q and k need the head width d / n_head, which parameters alone do not show.
Set `optim.n_head` (the model's query heads; k with grouped-query attention gets n_kv_head blocks by
itself, so no n_kv_head is needed). Left at None, it is read off qk-norm gains (Llama with qk_norm, whose
size is the head width); otherwise q and k fall back to one block per output neuron — a finer partition
than the paper's (each block inside one head), hence AdamW-like and safe, with a warning naming the fix.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.functional.moments import bias_correction, decay_, ema_, pick, step_buckets, with_grads
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class AdamMiniConfig(OptimConfig):
    name: str = "adam-mini"
    lr: float = 1e-3
    weight_decay: float = 0.1
    """The authors' GPT-2 runs (zyushun/Adam-mini examples/gpt2/config); the package's signature default is 0."""
    beta1: float = 0.9
    beta2: float = 0.95
    """The authors' GPT-2 runs, as AdamW's here; the package's signature default is 0.999."""
    eps: float = 1e-8
    n_head: int | None = None
    """The model's query heads, for the per-head blocks of q and k. None: from qk-norm gains if the model
    has them, else q and k get one block per output neuron (a warning says so)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check(self.n_head is None or self.n_head > 0, f"optim.n_head={self.n_head} must be positive")


# ---- the partition: which entries share one second-moment scalar -----------------------------------------
#
# A parameter is viewed as a matrix (rows, cols): rows = its first dimension for matrices, 1 for a norm gain
# (the whole tensor one row), numel for a bias (each element a row of one). Its partition is a list of
# segments (n_rows, rows_per_block) covering the rows in order: the rows of one block are contiguous.

Segments = tuple[tuple[int, int], ...]

_FUSED_QKV = re.compile(r"(^|\.)(c_attn|qkv|wqkv|query_key_value)\.weight$", re.IGNORECASE)
_QUERY_KEY = re.compile(r"(^|\.)(q_proj|k_proj|wq|wk|query|key)\.weight$", re.IGNORECASE)
_QK_NORM = re.compile(r"(^|\.)(q_norm|k_norm|q_layernorm|k_layernorm)\.weight$", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    kind: str
    why: str
    matches: Callable[[str, str, Tensor], bool]
    """(name, role, parameter) -> does it apply."""


BLOCK_RULES = (  # first match wins
    Block("row", "embedding table or output head: one block per token",
          lambda name, role, p: role in ("embedding", "head")),
    Block("element", "bias: plain AdamW", lambda name, role, p: role == "vector" and name.endswith("bias")),
    Block("tensor", "norm gain or other vector: one block per tensor", lambda name, role, p: role == "vector"),
    Block("qkv", "fused query/key/value: q and k per head, v per neuron",
          lambda name, role, p: bool(_FUSED_QKV.search(name)) and p.shape[0] == 3 * p.shape[1]),
    Block("head", "query or key: one block per head", lambda name, role, p: bool(_QUERY_KEY.search(name))),
    Block("row", "value, attention output, MLP (and any other matrix): one block per output neuron",
          lambda name, role, p: True),
)


def block_kind(name: str, role: str, p: Tensor) -> str:
    return next(rule.kind for rule in BLOCK_RULES if rule.matches(name, role, p))


def segments(kind: str, p: Tensor, head_dim: int | None) -> Segments:
    """The (n_rows, rows_per_block) segments of one parameter (head_dim None: per neuron for q and k)."""
    if kind == "element":
        return ((p.numel(), 1),)
    if kind == "tensor":
        return ((1, 1),)
    rows = p.shape[0]
    if kind == "row":
        return ((rows, 1),)
    heads = head_dim or 1
    if kind == "head":
        check(rows % heads == 0, f"optim.n_head gives head width {heads}, which does not divide the {rows} rows "
                                 f"of a query/key projection")
        return ((rows, heads),)
    d = rows // 3  # qkv: q and k per head, v per neuron
    check(d % heads == 0, f"optim.n_head gives head width {heads}, which does not divide d={d}")
    return ((2 * d, heads), (d, 1))


def as_rows(t: Tensor, segs: Segments) -> Tensor:
    """The tensor viewed as (rows, cols) for its partition."""
    return t.view(sum(n for n, _ in segs), -1)


def block_mean_sq(grad: Tensor, segs: Segments) -> Tensor:
    """Mean squared gradient of every block, as one vector (blocks in row order)."""
    rows = as_rows(grad, segs)
    out, start = [], 0
    for n, per in segs:
        out.append(rows[start:start + n].reshape(n // per, -1).square().mean(dim=1))
        start += n
    return torch.cat(out) if len(out) > 1 else out[0]


def per_row(block_values: Tensor, segs: Segments) -> Tensor:
    """Block values repeated for each row of their block, as a (rows, 1) column."""
    if all(per == 1 for _, per in segs):
        return block_values.unsqueeze(1)
    parts, start = [], 0
    for n, per in segs:
        parts.append(block_values[start:start + n // per].repeat_interleave(per))
        start += n // per
    return torch.cat(parts).unsqueeze(1)


def adam_mini_update_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], v_means: list[Tensor],
                      partitions: list[Segments], step: int, lr: float, beta1: float, beta2: float, eps: float,
                      weight_decay: float) -> None:
    """One Adam-mini step: v_b <- beta2 v_b + (1 - beta2) mean_b(g^2); m <- EMA(g); decoupled decay;
    p <- p - lr m / (1 - beta1^t) / (sqrt(v_b / (1 - beta2^t)) + eps), with v_b broadcast over its block.
    The per-tensor part keeps the reference's order of floating-point operations, so that trajectories agree
    to the last bit where they can (a bias whose gradient is pure rounding noise, as GPT-2's key bias, would
    otherwise amplify 1-ulp differences through m / sqrt(v))."""
    decay_(params, lr, weight_decay)
    ema_(exp_avgs, grads, beta1)
    torch._foreach_mul_(v_means, beta2)
    correction1, correction2_sqrt = bias_correction(beta1, step), math.sqrt(bias_correction(beta2, step))
    for p, g, m, v, segs in zip(params, grads, exp_avgs, v_means, partitions):
        if v.numel() == p.numel():  # one block per element: AdamW itself
            g = g.reshape(-1)
            v.addcmul_(g, g, value=1.0 - beta2)
            denom = (v.sqrt() / correction2_sqrt).add_(eps)
            p.view(-1).addcdiv_(m.reshape(-1), denom, value=-lr / correction1)
            continue
        v.add_(block_mean_sq(g, segs), alpha=1.0 - beta2)
        denom = (v.sqrt() / correction2_sqrt).add_(eps)
        update = as_rows(m, segs) * per_row((1.0 / correction1) / denom, segs)
        update.mul_(lr)
        as_rows(p, segs).sub_(update)


# ---- bookkeeping ------------------------------------------------------------------------------------------

class AdamMini(torch.optim.Optimizer):
    """Adam-mini over param groups carrying a `partition` list (one Segments per parameter)."""

    def __init__(self, groups: list[dict], lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.95,
                 eps: float = 1e-8, weight_decay: float = 0.1) -> None:
        super().__init__(groups, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay))

    @staticmethod
    def _init(p: Tensor, segs: Segments) -> dict:
        blocks = sum(n // per for n, per in segs)
        return {"step": 0, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "v_mean": torch.zeros(blocks, dtype=p.dtype, device=p.device)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            seg_of = {id(p): tuple(tuple(s) for s in segs) for p, segs in zip(group["params"], group["partition"])}
            params, grads, states = with_grads(group, self.state, lambda p: self._init(p, seg_of[id(p)]))
            for s in states:
                s["step"] += 1
            for step, idx in step_buckets(states).items():
                chosen = pick(states, idx)
                adam_mini_update_(pick(params, idx), pick(grads, idx), [s["exp_avg"] for s in chosen],
                                  [s["v_mean"] for s in chosen], [seg_of[id(p)] for p in pick(params, idx)], step,
                                  lr=group["lr"], beta1=group["beta1"], beta2=group["beta2"], eps=group["eps"],
                                  weight_decay=group["weight_decay"])
        return loss


def head_width(groups: list[dict], n_head: int | None) -> int | None:
    """d / n_head from the config and the q/k matrices' input width, or the size of a qk-norm gain, or None."""
    named = [(n, p) for g in groups for n, p in zip(g["names"], g["params"])]
    if n_head is not None:
        widths = {p.shape[1] for n, p in named if p.dim() == 2 and (_QUERY_KEY.search(n) or _FUSED_QKV.search(n))}
        for width in widths:
            check(width % n_head == 0, f"optim.n_head={n_head} does not divide the model width {width}")
        return widths.pop() // n_head if widths else None
    sizes = {p.numel() for n, p in named if _QK_NORM.search(n)}
    return sizes.pop() if len(sizes) == 1 else None


def partition_groups(groups: list[dict], n_head: int | None) -> list[dict]:
    """The routed groups, each with a `partition` entry: the block segments of each of its parameters."""
    width = head_width(groups, n_head)
    needs_heads = []
    out = []
    for g in groups:
        kinds = [block_kind(n, g["role"], p) for n, p in zip(g["names"], g["params"])]
        needs_heads += [n for n, k in zip(g["names"], kinds) if k in ("head", "qkv")]
        out.append({**g, "partition": [segments(k, p, width) for k, p in zip(kinds, g["params"])]})
    if needs_heads and width is None:
        warnings.warn(f"adam-mini: set optim.n_head (the model's attention heads) for per-head blocks of "
                      f"{needs_heads[0]} and other query/key weights; using one block per output neuron",
                      stacklevel=3)
    return out


def build_adam_mini(groups, cfg: AdamMiniConfig) -> torch.optim.Optimizer:
    return AdamMini(partition_groups(groups, cfg.n_head), lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay)


register(OptimizerSpec(
    name="adam-mini", config_cls=AdamMiniConfig, build=build_adam_mini, source="optbench",
    reference="Zhang et al. 2024 (arXiv 2406.16793); adam-mini==1.1.1 (adam_mini.Adam_mini)",
    search_space={"lr": LogUniform(1e-4, 1e-2), "beta2": Choice((0.95, 0.98, 0.99, 0.999)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),  # one second moment per block (row, head, tensor)
))
