"""Which implementation runs: flash-linear-attention's Triton chunk kernels, or our PyTorch chunked forms.

`backend` is a model's `kernel` key: `auto` takes fla's kernels for CUDA tensors when the package imports
and ours otherwise (CPU, float64, no fla); `fla` insists on fla's (a config that asks for it without the package
fails when the model is built); `torch` always runs ours, e.g. to compare the two on one GPU.

Both sides take the same arguments in fla's layout (q, k (B, T, H, K), v (B, T, H, V), log-space decays,
float32 states (B, H, K, V)) and scale queries by 1/sqrt(K). The calls follow fla-core 0.6.0's
fla.ops.gla.chunk_gla, fla.ops.delta_rule.chunk_delta_rule and fla.ops.gated_delta_rule.chunk_gated_delta_rule
(q/k normalisation, beta's sigmoid and the decay's parametrisation stay in our mixers, so no fused options).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from optbench.errors import check
from optbench.models.linear_attention.chunked import delta_rule_chunked, gated_delta_rule_chunked, gla_chunked

BACKENDS = ("auto", "fla", "torch")
FLA_HINT = "pip install 'optbench[linear-attention]'"


@functools.cache
def fla_ops() -> SimpleNamespace | None:
    """flash-linear-attention's three chunk kernels, or None when the package is not installed."""
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.gla import chunk_gla
    except ImportError:
        return None
    return SimpleNamespace(gla=chunk_gla, delta_rule=chunk_delta_rule, gated_delta_rule=chunk_gated_delta_rule)


def check_backend(backend: str) -> None:
    """A model asking for fla's kernels fails at build time, not at its first forward, without them."""
    check(backend != "fla" or fla_ops() is not None,
          f"model.kernel=fla needs flash-linear-attention ({FLA_HINT}); or set model.kernel=auto")


def uses_fla(backend: str, x: torch.Tensor) -> bool:
    """Whether a call on tensors like `x` goes to fla's kernels."""
    if backend == "auto":  # fla's Triton kernels have no float64 (train.dtype=float64, a verification run)
        return x.is_cuda and x.dtype != torch.float64 and fla_ops() is not None
    return backend == "fla"


def run_torch(fn, *args, initial_state: torch.Tensor | None, output_final_state: bool):
    """Our chunked form in float32 whatever the autocast region says: the state recurrence compounds
    rounding over every chunk, and fla's kernels keep their states in float32 too."""
    with torch.autocast(args[0].device.type, enabled=False):
        o, state = fn(*args, initial_state=initial_state)
    return o, state if output_final_state else None


def gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
        initial_state: torch.Tensor | None = None, output_final_state: bool = False,
        backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention with per-channel log-decays (B, T, H, K); returns (o, final state or None)."""
    if uses_fla(backend, q):
        return fla_ops().gla(q, k, v, log_decay.float(), initial_state=initial_state,
                             output_final_state=output_final_state)
    return run_torch(gla_chunked, q, k, v, log_decay, initial_state=initial_state,
                     output_final_state=output_final_state)


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               initial_state: torch.Tensor | None = None, output_final_state: bool = False,
               backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """DeltaNet's delta rule with writing strengths beta (B, T, H); returns (o, final state or None)."""
    if uses_fla(backend, q):
        return fla_ops().delta_rule(q, k, v, beta, initial_state=initial_state,
                                    output_final_state=output_final_state)
    return run_torch(delta_rule_chunked, q, k, v, beta, initial_state=initial_state,
                     output_final_state=output_final_state)


def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                     beta: torch.Tensor, initial_state: torch.Tensor | None = None,
                     output_final_state: bool = False, backend: str = "auto",
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule with per-head log-decays and writing strengths (B, T, H)."""
    if uses_fla(backend, q):
        return fla_ops().gated_delta_rule(q, k, v, log_decay.float(), beta, initial_state=initial_state,
                                          output_final_state=output_final_state)
    return run_torch(gated_delta_rule_chunked, q, k, v, log_decay, beta, initial_state=initial_state,
                     output_final_state=output_final_state)
