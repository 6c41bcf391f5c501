"""8-bit AdamW (Dettmers, Lewis, Shleifer & Zettlemoyer, 2022, "8-bit Optimizers via Block-wise
Quantization", arXiv 2110.02861).

AdamW whose two moments are stored in 8 bits: each moment tensor is cut into blocks of 256 elements, kept
as uint8 codes into the dynamic (tree) code map plus one fp32 absmax per block — the signed map for m, the
unsigned one for v (see `optbench.optim.functional.quantization`). Every step dequantises both moments,
runs the ordinary AdamW update in fp32 with the freshly updated moments, and requantises them: about
2 bytes of state per parameter (+ 8 bytes per 256-element block) instead of 8. Tensors with fewer than
`min_8bit_size` = 4096 elements keep fp32 moments, as bitsandbytes does (their state is negligible, and
norms/biases are where quantisation error hurts most).

Where it runs:
  - CUDA with `bitsandbytes` importable (extra `bnb`): `bitsandbytes.optim.AdamW8bit` itself, the
    authors' fused kernels.
  - otherwise (CPU, or no bitsandbytes): our code below, which follows bitsandbytes 0.50.2's reference
    path (`backends/cpu/ops.py::_optimizer_update_8bit_blockwise_cpu`: dequantise, fp32 update, requantise
    to the nearest code) with the same code maps, block size and min_8bit_size. It is checked step by step
    against bitsandbytes on CPU, against torchao 0.18's AdamW8bit, and against torch.optim.AdamW in fp32.
Deliberate differences from bitsandbytes: no percentile clipping and no `skip_zeros` (both off by default
there), no paged state; the state is stored under descriptive keys (`exp_avg_codes`, `exp_avg_absmax`, ...)
rather than bitsandbytes' `state1`/`absmax1`, and the code maps are rebuilt rather than saved.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_choice, check_unit_interval
from optbench.optim.functional.moments import (adam_denominator, bias_correction, decay_, ema_, ema_sq_, pick,
                                               step_buckets, with_grads)
from optbench.optim.functional.quantization import (BLOCK_SIZE, dequantize_blockwise, dynamic_map, num_blocks,
                                                    quantize_blockwise_)
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

BACKENDS = ("auto", "optbench", "bitsandbytes")


@dataclass
class Adam8bitConfig(OptimConfig):
    name: str = "adam8bit"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    """Decoupled (AdamW) decay; bitsandbytes' AdamW8bit default."""
    beta1: float = 0.9
    beta2: float = 0.999
    """bitsandbytes' (and the paper's Adam) default; LLM recipes often use 0.95 (see the search space)."""
    eps: float = 1e-8
    min_8bit_size: int = 4096
    """Tensors with fewer elements keep fp32 moments (bitsandbytes' default)."""
    backend: str = "auto"
    """auto: bitsandbytes on CUDA when importable, else optbench's own | optbench | bitsandbytes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check(self.min_8bit_size >= 0, f"optim.min_8bit_size={self.min_8bit_size} must be >= 0")
        check_choice("optim.backend", self.backend, BACKENDS)


# ---- the math ---------------------------------------------------------------------------------------------

def adamw_step_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """One AdamW step over fp32 moments, in place, foreach (torch.optim.AdamW's order of operations)."""
    decay_(params, lr, weight_decay)
    ema_(exp_avgs, grads, beta1)
    ema_sq_(exp_avg_sqs, grads, beta2)
    denom = adam_denominator(exp_avg_sqs, eps, bias_correction(beta2, step))
    torch._foreach_addcdiv_(params, exp_avgs, denom, -lr / bias_correction(beta1, step))


def adamw8bit_step_(param: Tensor, grad: Tensor, state: dict, qmap_signed: Tensor, qmap_unsigned: Tensor,
                    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """One AdamW step on a parameter whose moments are block-quantised: dequantise both moments (all blocks
    at once), update them and the parameter in fp32, requantise them into the state."""
    m = dequantize_blockwise(state["exp_avg_codes"], state["exp_avg_absmax"], qmap_signed)
    v = dequantize_blockwise(state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"], qmap_unsigned)
    adamw_step_([param], [grad.float()], [m], [v], state["step"], lr, beta1, beta2, eps, weight_decay)
    quantize_blockwise_(state["exp_avg_codes"], state["exp_avg_absmax"], m, qmap_signed)
    quantize_blockwise_(state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"], v, qmap_unsigned)


# ---- bookkeeping ------------------------------------------------------------------------------------------

class BlockwiseAdamW8bit(torch.optim.Optimizer):
    """AdamW with block-wise 8-bit moments for tensors of at least `min_8bit_size` elements."""

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 1e-2, min_8bit_size: int = 4096) -> None:
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                      min_8bit_size=min_8bit_size))
        self._qmaps: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _maps(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(signed, unsigned) code maps on `device`: constants, rebuilt rather than stored in the state."""
        if device not in self._qmaps:
            self._qmaps[device] = (dynamic_map(True, device), dynamic_map(False, device))
        return self._qmaps[device]

    @staticmethod
    def _init(p: Tensor, min_8bit_size: int) -> dict:
        if p.numel() < min_8bit_size:
            return {"step": 0, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        blocks = num_blocks(p.numel(), BLOCK_SIZE)
        # A zero absmax makes every block 0.0 whatever its codes (bitsandbytes starts from zeros too).
        return {"step": 0,
                "exp_avg_codes": torch.zeros(p.shape, dtype=torch.uint8, device=p.device),
                "exp_avg_absmax": torch.zeros(blocks, dtype=torch.float32, device=p.device),
                "exp_avg_sq_codes": torch.zeros(p.shape, dtype=torch.uint8, device=p.device),
                "exp_avg_sq_absmax": torch.zeros(blocks, dtype=torch.float32, device=p.device)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hp = dict(lr=group["lr"], beta1=group["beta1"], beta2=group["beta2"], eps=group["eps"],
                      weight_decay=group["weight_decay"])
            params, grads, states = with_grads(group, self.state, lambda p: self._init(p, group["min_8bit_size"]))
            for s in states:
                s["step"] += 1
            full = [i for i, s in enumerate(states) if "exp_avg" in s]
            full_states = pick(states, full)
            for step, idx in step_buckets(full_states).items():
                adamw_step_(pick(pick(params, full), idx), pick(pick(grads, full), idx),
                            [full_states[i]["exp_avg"] for i in idx], [full_states[i]["exp_avg_sq"] for i in idx],
                            step, **hp)
            for p, g, s in zip(params, grads, states):
                if "exp_avg_codes" in s:
                    adamw8bit_step_(p, g, s, *self._maps(p.device), **hp)
        return loss


# ---- registration -----------------------------------------------------------------------------------------

def _bnb_version() -> str | None:
    try:
        return importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return None


def _use_bitsandbytes(groups, cfg: Adam8bitConfig) -> bool:
    if cfg.backend == "optbench":
        return False
    installed = importlib.util.find_spec("bitsandbytes") is not None
    if cfg.backend == "bitsandbytes":
        check(installed, "optim.backend=bitsandbytes needs the package: pip install 'optbench[bnb]'")
        return True
    return installed and all(p.is_cuda for g in groups for p in g["params"])


def build_adam8bit(groups, cfg: Adam8bitConfig) -> torch.optim.Optimizer:
    if _use_bitsandbytes(groups, cfg):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                   weight_decay=cfg.weight_decay, min_8bit_size=cfg.min_8bit_size)
    return BlockwiseAdamW8bit(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps,
                              weight_decay=cfg.weight_decay, min_8bit_size=cfg.min_8bit_size)


_BNB = _bnb_version()
register(OptimizerSpec(
    name="adam8bit", config_cls=Adam8bitConfig, build=build_adam8bit,
    source=f"optbench (CPU) / bitsandbytes{'==' + _BNB if _BNB else ''} (CUDA)",
    reference=("Dettmers et al. 2022 (arXiv 2110.02861); bitsandbytes==0.50.2 AdamW8bit "
               "(backends/cpu/ops.py reference path), torchao==0.18.0 optim.AdamW8bit"),
    search_space={"lr": LogUniform(1e-4, 1e-2), "beta2": Choice((0.95, 0.98, 0.99, 0.999)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),  # quantisation blocks of 256 run across rows
))
