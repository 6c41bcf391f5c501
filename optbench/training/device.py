"""Device, precision and the few hardware facts the trainer reports (peak memory, MFU).

Precisions (train.dtype): float32 keeps parameters, gradients and optimizer state in float32; bfloat16 and float16
add autocast to the forward pass over those float32 parameters. float64 is a verification precision, not a training
one: the model is cast to float64 before it is wrapped and before the optimizer is built, so parameters, gradients,
optimizer state and every computation of the model and loss run in float64, without autocast. It serves to check
that a parallel or resumed run computes what one process computes: rounding at float64's 1e-16, where a sum taken in
another order (4 ranks' reduce-scatter against one process's accumulation) cannot grow to 1e-5 over a short run as
float32's 1e-7 can. Optimizers that compute some steps in lower precision on purpose (Newton–Schulz, eigenbases in
float32, as their references) keep doing so; both sides of a comparison then round the same way.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator

import torch

from optbench.config.schema import TrainConfig
from optbench.errors import UserError

# Dense bf16 tensor-core peak FLOP/s by device name, for MFU (vendor datasheets, no sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "4090": 165e12,
}


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; an unavailable device is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown train.device '{name}'; valid: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but CUDA is not available; valid here: auto, cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"train.device={name} but MPS is not available; valid here: auto, cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 autocast on CUDA and float32 elsewhere (bf16 matmuls are emulated on CPU)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name == "float64" and device.type == "mps":
        raise UserError("train.dtype=float64 is not supported on MPS; valid there: auto, float32, bfloat16, float16")
    return {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def param_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of parameters, gradients and optimizer state for a run at `dtype`: float64 for the verification
    precision, float32 otherwise (half precisions are autocast over float32 parameters)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; parameters and optimizer state stay in param_dtype(dtype)."""
    if dtype in (torch.float32, torch.float64):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def threads(cfg: TrainConfig) -> Iterator[None]:
    """torch's intra-op thread count set to train.threads for the block, then put back: a run inside a
    longer-lived process (a sweep worker, a notebook, a test session) leaves the process as it found it."""
    if cfg.threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory on CUDA; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None where MFU is not meaningful (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
