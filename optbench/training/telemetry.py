"""A run's health beside its loss: the `dynamics` record of every diag step and the spike counts of summary.json.

    telemetry = Telemetry(cfg.diag, model, plan, window, device, dtype, measures=world.is_main)
    grad_spike, loss_spike = telemetry.spikes(loss, grad_norm)   # every step
    telemetry.before_update(step + 1)                            # before clipping: the gradients are raw
    ... clip, update ...
    record = telemetry.after_update(step)                        # the dynamics record at a diag step, else None

A dynamics record holds, at step t (optbench/training/dynamics.py for the definitions):

    params      {parameter name: {update_rms, rel_update, update_cos, drift_cos, weight_norm, grad_norm,
                 row_update_rms_min, row_update_rms_median, row_update_rms_max}}
    roles       {routing role (embedding, head, vector, matrix): the same keys, its tensors as one vector}
    layers      [{layer, grad_norm}]: each block's gradient norm before clipping (embeddings, the final norm
                and an untied head belong to no block)
    attention   [{layer, max_logit, entropy}] on the probe window (attention_probe.py); empty for families
                without softmax attention

Every value comes to the host in one transfer (one `.tolist()` of all of them), after the timed step. Undefined
values (update_cos with no update of step t-1 in this process, drift_cos with no W_{t-k}, a ratio over a zero
norm) are None, JSON null.

Under torchrun only rank 0 measures: DDP's replicas hold equal weights and, after the all-reduce, equal
gradients, so one rank's figures are every rank's. FSDP's shards are refused (refusals.check_parallel).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from optbench.config.schema import DiagConfig
from optbench.optim.routing import ROLES, Routed
from optbench.training import dynamics
from optbench.training.attention_probe import attention_stats
from optbench.training.diagnostics import SpikeDetector


def block_of(model: nn.Module) -> dict[int, int]:
    """id(parameter) -> the index of the block (model.blocks()) holding it."""
    return {id(p): i for i, block in enumerate(model.blocks()) for p in block.parameters()}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _split(values: list[float], sizes: list[int]) -> list[list[float]]:
    """`values` cut into consecutive pieces of `sizes`."""
    ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
    return [values[end - size:end] for size, end in zip(sizes, ends)]


def _keyed(values: list[float], names: list[str]) -> dict[str, dict[str, float | None]]:
    """Row i of a flattened (len(names), len(KEYS)) table as {names[i]: {key: value}}."""
    width = len(dynamics.KEYS)
    return {name: {key: _finite(v) for key, v in zip(dynamics.KEYS, values[i * width:(i + 1) * width])}
            for i, name in enumerate(names)}


class Telemetry:
    """The dynamics tracker, the attention probe and the spike detectors of one run."""

    def __init__(self, cfg: DiagConfig, model: nn.Module, plan: list[Routed], window: torch.Tensor,
                 device: torch.device, dtype: torch.dtype, measures: bool):
        self.model, self.window, self.device, self.dtype = model, window, device, dtype
        self.names = [r.name for r in plan]
        self.roles = [role for role in ROLES if any(r.role == role for r in plan)]
        self.role_members = [[i for i, r in enumerate(plan) if r.role == role] for role in self.roles]
        self.role_index = torch.tensor([self.roles.index(r.role) for r in plan], device=device)
        blocks = block_of(model)
        in_block = [i for i, r in enumerate(plan) if id(r.param) in blocks]
        self.block_params = torch.tensor(in_block, dtype=torch.long, device=device)
        self.block_index = torch.tensor([blocks[id(plan[i].param)] for i in in_block], dtype=torch.long, device=device)
        self.n_blocks = len(model.blocks())
        self.tracker = dynamics.DynamicsTracker([r.param for r in plan], cfg.every if measures else 0, cfg.drift_steps)
        self.grad_spikes = SpikeDetector()
        self.loss_spikes = SpikeDetector(factor=cfg.loss_spike_factor)
        self.max_attn_logit: float | None = None

    def spikes(self, loss: float, grad_norm: float) -> tuple[bool, bool]:
        """(grad spike, loss spike) of this step, each counted."""
        return self.grad_spikes(grad_norm), self.loss_spikes(loss)

    def before_update(self, step: int) -> None:
        self.tracker.before_update(step)

    def after_update(self, step: int) -> dict[str, Any] | None:
        measured = self.tracker.after_update(step)
        if measured is None:
            return None
        sums, rows = measured.sums, measured.rows
        params = dynamics.table(sums, rows)
        roles = dynamics.table(sums.grouped(self.role_index, len(self.roles)),
                               dynamics.group_rows(rows, self.role_members))
        blocks = sums.grad_sq.new_zeros(self.n_blocks).index_add_(
            0, self.block_index, sums.grad_sq[self.block_params]).sqrt()
        layers, attention = attention_stats(self.model, self.window, self.device, self.dtype)
        parts = (params, roles, blocks, attention.double())
        values = torch.cat([part.flatten() for part in parts]).tolist()  # the step's one host transfer
        param_values, role_values, block_values, attention_values = _split(values, [part.numel() for part in parts])
        record = {"params": _keyed(param_values, self.names), "roles": _keyed(role_values, self.roles),
                  "layers": [{"layer": i, "grad_norm": _finite(g)} for i, g in enumerate(block_values)],
                  "attention": [{"layer": layer, "max_logit": _finite(attention_values[2 * i]),
                                 "entropy": _finite(attention_values[2 * i + 1])} for i, layer in enumerate(layers)]}
        self._note_max_logit(record["attention"])
        return record

    def _note_max_logit(self, attention: list[dict[str, Any]]) -> None:
        logits = [a["max_logit"] for a in attention if a["max_logit"] is not None]
        if logits:
            self.max_attn_logit = max(logits if self.max_attn_logit is None else [*logits, self.max_attn_logit])

    def summary(self) -> dict[str, Any]:
        """summary.json's counts over the whole run (resumes included) and the largest attention logit seen."""
        return {"loss_spikes": self.loss_spikes.count, "grad_spikes": self.grad_spikes.count,
                "max_attn_logit": self.max_attn_logit}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the spike detectors' histories and counts, and the largest logit so far."""
        return {"grad_spikes": self.grad_spikes.state_dict(), "loss_spikes": self.loss_spikes.state_dict(),
                "max_attn_logit": self.max_attn_logit}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grad_spikes.load_state_dict(state["grad_spikes"])
        self.loss_spikes.load_state_dict(state["loss_spikes"])
        self.max_attn_logit = state["max_attn_logit"]
