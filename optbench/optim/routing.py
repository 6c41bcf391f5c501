"""Parameter routing, shared by every optimizer: each parameter gets a role, each role a treatment.

Roles come from ordered rules (first match wins), as torchtitan's param-group config does, instead of
each model building its own optimizer groups:

    embedding  tables of nn.Embedding (token and position embeddings; a tied head is this table)
    head       the untied output projection (lm_head / output)
    vector     anything with fewer than 2 dimensions: norm gains, biases
    matrix     every other weight: the hidden matrices (attention, MLP; experts in MoE models)

Weight decay: matrices and the head decay, vectors never do, embeddings as `optim.decay_embeddings`
says (GPT-2/nanoGPT decay them). Matrix optimizers (Muon, D-Muon, RMNP, ...) take only the `matrix`
role; the other roles go to their backup optimizer (AdamW by default). Whether a parameter decays and by how
much both come from the optimizer that takes it: a backup parameter gets `optim.backup.weight_decay` and
`optim.backup.decay_embeddings`, whatever the main optimizer's decay is (a Muon sweep over optim.weight_decay
must not switch the backup's decay on and off).

`route` makes the one build plan of a run: the optimizer (registry.build_for) and routing.json are both made
from the same list of `Routed`, so what is reported is what was built.

Learning rate: a model may declare per-parameter multipliers (`model.lr_multipliers()`: muP's 1/width for
hidden matrices, see optbench/models/mup.py). Each multiplier gets its own param group with lr = optim.lr *
multiplier (the trainer's schedule then scales each group's own lr) and weight decay = optim.weight_decay /
multiplier, so decoupled decay's per-step shrink lr * wd is unchanged, as microsoft/mup's MuAdam does
(mup/optim.py at 0518b39e91caa5d81ad0529225046cbdfdef69c4). Parameters without one train at optim.lr. Here too
`optim` is the optimizer that takes the parameter: a backup parameter's lr and decay are `optim.backup`'s.
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
    """One parameter's entry in the build plan: who takes it and with what decay and lr."""

    name: str
    param: torch.Tensor
    role: str
    weight_decay: float
    """Its group's weight decay: its optimizer's weight_decay (over lr_mult, muP) where it decays, else 0."""
    lr_mult: float | None = None
    """The model's lr multiplier for this parameter (muP); None: the model declares none, so optim.lr applies."""
    lr: float | None = None
    """Its optimizer's lr * lr_mult, this parameter's group lr; None without a multiplier."""
    part: str = "main"
    """'main': the configured optimizer takes it; 'backup': a matrix optimizer's `optim.backup` does."""
    optimizer: str = ""
    """The name of the optimizer that takes it (the main one's or the backup's)."""
    decays: bool = False
    """What the routing rules say for its role under the taking optimizer's `decay_embeddings`."""


def _owners(model: nn.Module) -> dict[int, list[nn.Module]]:
    """id(parameter) -> the modules that hold it directly."""
    owners: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(module)
    return owners


def route(model: nn.Module, cfg: OptimConfig, matrix_only: bool = False) -> list[Routed]:
    """The build plan: every trainable parameter (a tied one once) with its role, the optimizer that takes it
    (`matrix_only`: non-matrices go to `cfg.backup`), its weight decay and the model's lr multiplier."""
    owners = _owners(model)
    multipliers = model.lr_multipliers() if hasattr(model, "lr_multipliers") else {}
    plan = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = next(rule.role for rule in RULES if rule.matches(name, p, owners[id(p)]))
        part = "backup" if matrix_only and role != "matrix" else "main"
        plan.append(_entry(name, p, role, part, cfg.backup if part == "backup" else cfg, multipliers.get(name)))
    return plan


def decays(role: str, cfg: OptimConfig) -> bool:
    """The routing rule of weight decay, under the config of the optimizer taking the parameter."""
    return role in ("matrix", "head") or (role == "embedding" and cfg.decay_embeddings)


def _entry(name: str, p: torch.Tensor, role: str, part: str, owner: OptimConfig, mult: float | None) -> Routed:
    """One plan entry; decay and lr come from `owner`, the config of the optimizer that takes the parameter."""
    decaying = decays(role, owner)
    decay = owner.weight_decay if decaying else 0.0
    common = {"part": part, "optimizer": owner.name, "decays": decaying}
    if mult is None:
        return Routed(name, p, role, decay, **common)
    return Routed(name, p, role, decay / mult, lr_mult=mult, lr=owner.lr * mult, **common)


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
