"""Optimizer state comes back from a checkpoint in the dtypes it was saved in.

torch.optim.Optimizer.load_state_dict casts every floating-point state tensor to its parameter's dtype. Optimizers
that keep some state in float32 on purpose over wider parameters (SOAP's and Shampoo's factors and bases, PSGD-Kron's
preconditioner, 8-bit Adam's scales, under train.dtype=float64) would then resume in float64: a resumed run would
compute in another precision than the uninterrupted one, or fail where float32 and float64 meet. The trainer resumes
only checkpoints whose weights have the run's parameter dtype (resume.check_precision), so the saved dtypes are the
ones this run would have made.
"""

from __future__ import annotations

from typing import Any

import torch


def _dtypes(value: Any) -> Any:
    """`value`'s nesting with each tensor replaced by its dtype (None elsewhere)."""
    if isinstance(value, torch.Tensor):
        return value.dtype
    if isinstance(value, dict):
        return {key: _dtypes(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dtypes(v) for v in value]
    return None


def _cast(value: Any, dtypes: Any) -> Any:
    """`value` with each tensor cast to the dtype at its place in `dtypes`."""
    if isinstance(value, torch.Tensor):
        return value if dtypes is None or value.dtype == dtypes else value.to(dtypes)
    if isinstance(value, dict):
        return {key: _cast(v, dtypes.get(key)) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, d) for v, d in zip(value, dtypes, strict=True))
    return value


def keep_saved_dtypes(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Hook `optimizer` so that load_state_dict leaves each state tensor in the dtype the state dict holds it in."""
    saved: dict[torch.Tensor, Any] = {}

    def before(opt: torch.optim.Optimizer, state_dict: dict) -> None:
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in opt.param_groups for p in group["params"]]
        saved.clear()
        saved.update({p: _dtypes(state_dict["state"][i]) for i, p in zip(ids, params) if i in state_dict["state"]})

    def after(opt: torch.optim.Optimizer) -> None:
        for param, dtypes in saved.items():
            opt.state[param] = _cast(opt.state[param], dtypes)
        saved.clear()

    optimizer.register_load_state_dict_pre_hook(before)
    optimizer.register_load_state_dict_post_hook(after)
    return optimizer
