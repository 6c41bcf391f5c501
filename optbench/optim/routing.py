"""Parameter routing, shared by every optimizer: each parameter gets a role, each role a treatment.

Roles come from ordered rules (first match wins), as torchtitan's param-group config does, instead of
each model building its own optimizer groups:

    embedding  tables of nn.Embedding (token and position embeddings; a tied head is this table)
    head       the untied output projection (lm_head / output)
    vector     anything with fewer than 2 dimensions: norm gains, biases
    matrix     every other weight: the hidden matrices (attention, MLP; experts in MoE models)

Weight decay: matrices and the head decay, vectors never do, embeddings as `optim.decay_embeddings`
says (GPT-2/nanoGPT decay them). Matrix optimizers (Muon, D-Muon, Scion, ...) take only the `matrix`
role; the other roles go to their backup optimizer (AdamW by default).

Learning rate: a model may declare per-parameter multipliers (`model.lr_multipliers()`: muP's 1/width for
hidden matrices, see optbench/models/mup.py). Each multiplier gets its own param group with lr = optim.lr *
multiplier (the trainer's schedule then scales each group's own lr) and weight decay = optim.weight_decay /
multiplier, so decoupled decay's per-step shrink lr * wd is unchanged, as microsoft/mup's MuAdam does
(mup/optim.py at 0518b39e91caa5d81ad0529225046cbdfdef69c4). Parameters without one train at optim.lr.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from optbench.config.schema import OptimConfig

ROLES = ("embedding", "head", "vector", "matrix")
HEAD_NAME = re.compile(r"(^|\.)(lm_head|output|head)\.weight$")


@dataclass(frozen=True)
class Rule:
    role: str
    why: str
    matches: Callable[[str, torch.Tensor, list[nn.Module]], bool]
    """(parameter name, parameter, every module holding it: a tied weight has two) -> does it apply."""


RULES = (
    Rule("embedding", "a table of an nn.Embedding (a head tied to it included)",
         lambda name, p, owners: any(isinstance(m, nn.Embedding) for m in owners)),
    Rule("head", "the output projection", lambda name, p, owners: bool(HEAD_NAME.search(name))),
    Rule("vector", "fewer than 2 dimensions", lambda name, p, owners: p.dim() < 2),
    # A depthwise convolution's (channels, 1, width) kernel is a short filter per channel, not a linear map:
    # orthogonalising or preconditioning it as a matrix (Muon, SOAP) would mix unrelated channels.
    Rule("vector", "a depthwise convolution's per-channel filters",
         lambda name, p, owners: any(isinstance(m, nn.Conv1d) and m.groups == m.in_channels > 1 for m in owners)),
    Rule("matrix", "any other weight", lambda name, p, owners: True),
)


@dataclass(frozen=True)
class Routed:
    """One parameter's routing decision."""

    name: str
    param: torch.Tensor
    role: str
    weight_decay: float
    lr_mult: float | None = None
    """The model's lr multiplier for this parameter (muP); None: the model declares none, so optim.lr applies."""
    lr: float | None = None
    """optim.lr * lr_mult, this parameter's group lr; None without a multiplier."""


def _owners(model: nn.Module) -> dict[int, list[nn.Module]]:
    """id(parameter) -> the modules that hold it directly."""
    owners: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(module)
    return owners


def route(model: nn.Module, cfg: OptimConfig) -> list[Routed]:
    """Every trainable parameter (a tied one once) with its role, weight decay and the model's lr multiplier."""
    owners = _owners(model)
    multipliers = model.lr_multipliers() if hasattr(model, "lr_multipliers") else {}
    routed = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = next(rule.role for rule in RULES if rule.matches(name, p, owners[id(p)]))
        decays = role in ("matrix", "head") or (role == "embedding" and cfg.decay_embeddings)
        mult = multipliers.get(name)
        decay = cfg.weight_decay if decays else 0.0
        if mult is None:
            routed.append(Routed(name, p, role, decay))
        else:
            routed.append(Routed(name, p, role, decay / mult, lr_mult=mult, lr=cfg.lr * mult))
    return routed


def groups_by_role(routed: list[Routed], **extra) -> list[dict]:
    """torch.optim param groups, one per role and lr multiplier present, each tagged with its role and parameter
    names; a group with a multiplier also carries it (`lr_mult`) and its own `lr`."""
    groups = []
    for role in ROLES:
        members = [r for r in routed if r.role == role]
        for mult in dict.fromkeys(r.lr_mult for r in members):  # each multiplier once, in order of appearance
            same = [r for r in members if r.lr_mult == mult]
            group = {"params": [r.param for r in same], "names": [r.name for r in same],
                     "role": role, "weight_decay": same[0].weight_decay, **extra}
            if mult is not None:
                group.update(lr=same[0].lr, lr_mult=mult)
            groups.append(group)
    return groups
