"""Training dynamics at a diag step: how far, and in which direction, each parameter tensor moved.

At a diag step t (steps count the updates done; t is a multiple of diag.every), per parameter tensor:

    update_rms            ||dW_t|| / sqrt(numel), where dW_t = W_t - W_{t-1} is the update step t applied
    rel_update            ||dW_t|| / ||W_{t-1}||, relative to the weights the update was applied to
    update_cos            <dW_t, dW_{t-1}> / (||dW_t|| ||dW_{t-1}||): consecutive updates' alignment
    drift_cos             <W_t, W_{t-k}> / (||W_t|| ||W_{t-k}||), k = diag.drift_k: how far the weights turned
    weight_norm           ||W_t||
    grad_norm             ||g_t||, step t's gradient before clipping
    row_update_rms_*      min, median (the lower middle one for an even count) and max over the rows r of dW_t
                          of ||dW_t[r]|| / sqrt(row length); a row is a slice along dim 0 (a Linear's output
                          neuron, an embedding's token), so each entry of a vector is its own row

A group of tensors (a routing role) is measured as their concatenation: its squared norms and dot products are
the sums of its members' before any ratio is taken, and its row statistics run over all of their rows.

Only what the angles need outlives a step: W_{t-k}, copied at step t-k, and dW_{t-1}, from step t-1. W_{t-1} is
copied just before step t's update and turned into dW_t in place after it; nothing is held between the diag
windows. Everything stays on the device: `DynamicsTracker.after_update` returns tensors, NaN where a value is
undefined (no previous update or reference after a resume, a zero norm), for the caller to move to the host
once with the rest of the step's telemetry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from optbench.models.layers import upcast

KEYS = ("update_rms", "rel_update", "update_cos", "drift_cos", "weight_norm", "grad_norm",
        "row_update_rms_min", "row_update_rms_median", "row_update_rms_max")
"""The columns of `table`, in order: the names a dynamics record uses."""


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> over all entries, as a float64 scalar (summed in the tensors' precision, float32 at least)."""
    return torch.dot(upcast(a).reshape(-1), upcast(b).reshape(-1)).double()


def dots(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """<a_i, b_i> for each pair of tensors, stacked."""
    return torch.stack([dot(x, y) for x, y in zip(a, b)])


def row_rms(delta: torch.Tensor) -> torch.Tensor:
    """The RMS of each row (slice along dim 0) of `delta`; a 0-d tensor is one row."""
    rows = upcast(delta).reshape(delta.shape[0] if delta.dim() else 1, -1)
    return rows.pow(2).mean(dim=1).sqrt()


def row_summary(rms: torch.Tensor) -> torch.Tensor:
    """(min, lower median, max) of per-row RMS values, as float64."""
    return torch.stack([rms.min(), rms.median(), rms.max()]).double()


@dataclass
class Sums:
    """Per tensor (or per group of tensors): the sums every dynamics value is a ratio of, float64 vectors."""

    numel: torch.Tensor
    update_sq: torch.Tensor
    """||dW_t||^2"""
    before_sq: torch.Tensor
    """||W_{t-1}||^2"""
    weight_sq: torch.Tensor
    """||W_t||^2"""
    grad_sq: torch.Tensor
    """||g_t||^2 before clipping"""
    update_dot_previous: torch.Tensor
    """<dW_t, dW_{t-1}>"""
    previous_sq: torch.Tensor
    """||dW_{t-1}||^2"""
    weight_dot_reference: torch.Tensor
    """<W_t, W_{t-k}>"""
    reference_sq: torch.Tensor
    """||W_{t-k}||^2"""

    def grouped(self, index: torch.Tensor, groups: int) -> Sums:
        """The sums of the tensors of each group: tensor i belongs to group index[i]."""
        def add(values: torch.Tensor) -> torch.Tensor:
            return values.new_zeros(groups).index_add_(0, index, values)
        return Sums(**{f.name: add(getattr(self, f.name)) for f in fields(self)})


def ratios(s: Sums) -> torch.Tensor:
    """(N, 6): update_rms, rel_update, update_cos, drift_cos, weight_norm, grad_norm from the sums."""
    return torch.stack([
        (s.update_sq / s.numel).sqrt(),
        (s.update_sq / s.before_sq).sqrt(),
        s.update_dot_previous / (s.update_sq * s.previous_sq).sqrt(),
        s.weight_dot_reference / (s.weight_sq * s.reference_sq).sqrt(),
        s.weight_sq.sqrt(),
        s.grad_sq.sqrt(),
    ], dim=1)


def table(s: Sums, rows: list[torch.Tensor]) -> torch.Tensor:
    """(N, len(KEYS)): every dynamics value of N tensors (or groups), `rows[i]` the per-row RMS of the i-th."""
    return torch.cat([ratios(s), torch.stack([row_summary(r) for r in rows])], dim=1)


def group_rows(rows: list[torch.Tensor], members: list[list[int]]) -> list[torch.Tensor]:
    """The per-row RMS of each group: its members' rows side by side."""
    return [torch.cat([rows[i] for i in group]) for group in members]


@dataclass
class Measured:
    """One diag step's dynamics, on the device: the sums and the per-row RMS of each tensor's update."""

    sums: Sums
    rows: list[torch.Tensor]


def _copy(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().to(torch.promote_types(p.dtype, torch.float32), copy=True) for p in params]


def _weights(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [upcast(p.detach()) for p in params]


def _squares(tensors: list[torch.Tensor]) -> torch.Tensor:
    return dots(tensors, tensors)


class DynamicsTracker:
    """Copies the weights at the steps the next diag step's values need, and measures at the diag step.

    The trainer calls `before_update(t)` before clipping and the update that complete step t (the weights are
    W_{t-1}, the gradients step t's own), and `after_update(t)` once W_t is in place.
    """

    def __init__(self, params: list[torch.Tensor], every: int, drift_k: int):
        self.params = params
        self.every, self.drift_k = every, drift_k
        self.numel = torch.tensor([float(p.numel()) for p in params], dtype=torch.float64,
                                  device=params[0].device if params else None)
        self.before: list[torch.Tensor] | None = None
        """W_{t-1} during a step t that is, or precedes, a diag step; dW_t after it."""
        self.grad_sq: torch.Tensor | None = None
        # With drift_k <= every, both belong to the coming diag step t: a process that starts (resumes) after
        # step t-k or t-1 simply has none of them.
        self.previous: list[torch.Tensor] | None = None
        """dW_{t-1}, the update of the step before the diag step t."""
        self.reference: list[torch.Tensor] | None = None
        """W_{t-k}, the weights the diag step t's drift_cos compares with."""

    def is_diag(self, step: int) -> bool:
        return self.every > 0 and step > 0 and step % self.every == 0

    def before_update(self, step: int) -> None:
        if self.is_diag(step - 1 + self.drift_k):
            self.reference = _copy(self.params)
        if self.is_diag(step) or self.is_diag(step + 1):
            self.before = _copy(self.params)
        if self.is_diag(step):
            self.grad_sq = torch.stack([dot(p.grad, p.grad) if p.grad is not None else self.numel.new_zeros(())
                                        for p in self.params])

    def after_update(self, step: int) -> Measured | None:
        """The diag step's measurements; None at any other step."""
        if self.before is None:
            return None
        delta, self.before = self.before, None
        weights = _weights(self.params)
        before_sq = _squares(delta) if self.is_diag(step) else None
        torch._foreach_sub_(delta, weights)
        torch._foreach_neg_(delta)  # W_{t-1} - W_t, negated: dW_t, computed in place of the copy
        if not self.is_diag(step):
            self.previous = delta
            return None
        previous, reference = self.previous, self.reference
        self.previous = delta if self.is_diag(step + 1) else None
        self.reference = None
        return Measured(self._sums(delta, before_sq, weights, previous, reference), [row_rms(d) for d in delta])

    def _sums(self, delta: list[torch.Tensor], before_sq: torch.Tensor, weights: list[torch.Tensor],
              previous: list[torch.Tensor] | None, reference: list[torch.Tensor] | None) -> Sums:
        undefined = torch.full_like(self.numel, math.nan)
        grad_sq, self.grad_sq = self.grad_sq, None
        return Sums(numel=self.numel, update_sq=_squares(delta), before_sq=before_sq, weight_sq=_squares(weights),
                    grad_sq=grad_sq,
                    update_dot_previous=dots(delta, previous) if previous is not None else undefined,
                    previous_sq=_squares(previous) if previous is not None else undefined,
                    weight_dot_reference=dots(weights, reference) if reference is not None else undefined,
                    reference_sq=_squares(reference) if reference is not None else undefined)
