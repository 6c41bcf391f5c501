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
    Rule("matrix", "any other weight", lambda name, p, owners: True),
)


@dataclass(frozen=True)
class Routed:
    """One parameter's routing decision."""

    name: str
    param: torch.Tensor
    role: str
    weight_decay: float


def _owners(model: nn.Module) -> dict[int, list[nn.Module]]:
    """id(parameter) -> the modules that hold it directly."""
    owners: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(module)
    return owners


def route(model: nn.Module, cfg: OptimConfig) -> list[Routed]:
    """Every trainable parameter (a tied one once) with its role and weight decay."""
    owners = _owners(model)
    routed = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = next(rule.role for rule in RULES if rule.matches(name, p, owners[id(p)]))
        decays = role in ("matrix", "head") or (role == "embedding" and cfg.decay_embeddings)
        routed.append(Routed(name, p, role, cfg.weight_decay if decays else 0.0))
    return routed


def groups_by_role(routed: list[Routed], **extra) -> list[dict]:
    """torch.optim param groups, one per role present, each tagged with its role and parameter names."""
    groups = []
    for role in ROLES:
        members = [r for r in routed if r.role == role]
        if members:
            groups.append({"params": [r.param for r in members], "names": [r.name for r in members],
                           "role": role, "weight_decay": members[0].weight_decay, **extra})
    return groups


def describe(routed: list[Routed], optimizer_of: Callable[[str], str]) -> list[dict]:
    """The routing as rows (name, shape, role, optimizer, weight decay): printed and saved per run."""
    return [{"name": r.name, "shape": list(r.param.shape), "role": r.role,
             "optimizer": optimizer_of(r.role), "weight_decay": r.weight_decay} for r in routed]
