"""Installed reference implementations, built with our defaults' hyperparameters, for benchmarks/optim_step.py.

Each factory takes (hidden matrices, all other parameters) and returns the reference optimizer over both,
so that hybrid references (Muon with its auxiliary AdamW) get the same split that optbench's routing makes.
Where a reference's update differs from ours by design (noted per row), its ratio compares two algorithms.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable

import torch

from optbench.optim.registry import make_config

Factory = Callable[[list[torch.Tensor], list[torch.Tensor]], torch.optim.Optimizer]


def _muon_like(cls, c, **matrix_extra):
    """A reference with `use_muon` groups (muon-optimizer, pytorch_optimizer.NorMuon) and an AdamW backup."""
    def factory(matrices, others):
        return cls([
            dict(params=matrices, use_muon=True, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                 **matrix_extra),
            dict(params=others, use_muon=False, lr=c.backup.lr, betas=(c.backup.beta1, c.backup.beta2),
                 eps=c.backup.eps, weight_decay=c.backup.weight_decay)])
    return factory


def _quietly(build):
    """Some packages print their settings when built."""
    with contextlib.redirect_stdout(io.StringIO()):
        return build()


def reference_factories() -> dict[str, Factory]:
    import adabelief_pytorch
    import adam_mini
    import adamp
    import adopt
    import bitsandbytes
    import came_pytorch
    import galore_torch
    import kron_torch
    import lion_pytorch
    import muon
    import pytorch_optimizer as po
    import sophia_opt

    c = make_config

    def sophia(m, o, s=c("sophiag")):
        opt = sophia_opt.SophiaG(m + o, lr=s.lr, betas=(s.beta1, s.beta2), rho=s.rho, weight_decay=s.weight_decay)
        opt.step = functools.partial(opt.step, bs=4096)  # the package takes B at every step
        return opt

    def mars(kind, s):
        return lambda m, o: po.MARS(m + o, lr=s.lr, betas=(s.beta1, getattr(s, "beta2", 0.99)), gamma=s.gamma,
                                    weight_decay=s.weight_decay, mars_type=kind)

    def low_rank(cls, s, **extra):
        """GaLore/APOLLO references take the projected matrices as their own group."""
        return lambda m, o: cls([dict(params=o), dict(params=m, rank=s.rank, update_proj_gap=s.update_proj_gap,
                                                       scale=s.scale, **extra)],
                                lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, weight_decay=s.weight_decay,
                                **({"scale_type": s.scale_type} if hasattr(s, "scale_type") else
                                   {"no_deprecation_warning": True}))

    def adam_mini_ref(m, o, s=c("adam-mini")):
        # Invented names send matrices down its per-neuron path, vectors per tensor, tables per row.
        named = ([(f"mlp.{i}.weight", p) for i, p in enumerate(m)]
                 + [(f"ln.{i}.weight" if p.dim() < 2 else f"embd.{i}.weight", p) for i, p in enumerate(o)])
        return adam_mini.Adam_mini(named, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps,
                                   weight_decay=s.weight_decay, verbose=False)

    lion, adopt_c, lamb, ademamix, soap, signum = (c(n) for n in ("lion", "adopt", "lamb", "ademamix", "soap",
                                                                  "signum"))
    belief, adam_p, adan, came, conda, laprop = (c(n) for n in ("adabelief", "adamp", "adan", "came", "conda",
                                                                "laprop"))
    c_adamw, c_lion, kron, a8 = c("c-adamw"), c("c-lion"), c("psgd-kron"), c("adam8bit")
    nor = c("normuon")
    return {
        "lion": lambda m, o: lion_pytorch.Lion(m + o, lr=lion.lr, betas=(lion.beta1, lion.beta2),
                                               weight_decay=lion.weight_decay),
        "muon": _muon_like(muon.SingleDeviceMuonWithAuxAdam, c("muon")),
        "normuon": _muon_like(po.NorMuon, nor, beta2=nor.beta2, eps=nor.eps, update_scale=nor.update_scale),
        "adopt": lambda m, o: adopt.ADOPT(m + o, lr=adopt_c.lr, betas=(adopt_c.beta1, adopt_c.beta2),
                                          eps=adopt_c.eps, weight_decay=adopt_c.weight_decay, decouple=True),
        "lamb": lambda m, o: po.Lamb(m + o, lr=lamb.lr, betas=(lamb.beta1, lamb.beta2), eps=lamb.eps,
                                     weight_decay=lamb.weight_decay),
        "ademamix": lambda m, o: po.AdEMAMix(m + o, lr=ademamix.lr, betas=(ademamix.beta1, ademamix.beta2,
                                                                            ademamix.beta3), alpha=ademamix.alpha),
        "soap": lambda m, o: po.SOAP(m + o, lr=soap.lr, betas=(soap.beta1, soap.beta2), eps=soap.eps,
                                     weight_decay=soap.weight_decay,
                                     precondition_frequency=soap.precondition_frequency),
        "signum": lambda m, o: po.SignSGD(m + o, lr=signum.lr, momentum=signum.momentum),
        "sophiag": sophia,
        "mars-adamw": mars("adamw", c("mars-adamw")),
        "mars-lion": mars("lion", c("mars-lion")),
        "adabelief": lambda m, o: _quietly(lambda: adabelief_pytorch.AdaBelief(
            m + o, lr=belief.lr, betas=(belief.beta1, belief.beta2), eps=belief.eps,
            weight_decay=belief.weight_decay, weight_decouple=belief.decouple, rectify=belief.rectify,
            degenerated_to_sgd=belief.degenerated_to_sgd, print_change_log=False)),
        "adamp": lambda m, o: adamp.AdamP(m + o, lr=adam_p.lr, betas=(adam_p.beta1, adam_p.beta2), eps=adam_p.eps,
                                          weight_decay=adam_p.weight_decay, delta=adam_p.delta,
                                          wd_ratio=adam_p.wd_ratio, nesterov=adam_p.nesterov),
        "adan": lambda m, o: po.Adan(m + o, lr=adan.lr, betas=(adan.beta1, adan.beta2, adan.beta3), eps=adan.eps,
                                     weight_decay=adan.weight_decay, weight_decouple=adan.no_prox,
                                     max_grad_norm=adan.max_grad_norm),
        "came": lambda m, o: came_pytorch.CAME(m + o, lr=came.lr, eps=(came.eps1, came.eps2),
                                               clip_threshold=came.clip_threshold,
                                               betas=(came.beta1, came.beta2, came.beta3),
                                               weight_decay=came.weight_decay),
        "conda": lambda m, o: po.Conda(m + o, lr=conda.lr, betas=(conda.beta1, conda.beta2), eps=conda.eps,
                                       weight_decay=conda.weight_decay, update_proj_gap=conda.update_proj_gap,
                                       scale=conda.scale),
        "laprop": lambda m, o: po.LaProp(m + o, lr=laprop.lr, betas=(laprop.beta1, laprop.beta2), eps=laprop.eps,
                                         weight_decay=laprop.weight_decay),
        # pytorch_optimizer has no cautious AdamW class; its AdEMAMix at alpha 0 is exactly C-AdamW.
        "c-adamw": lambda m, o: po.AdEMAMix(m + o, lr=c_adamw.lr, betas=(c_adamw.beta1, c_adamw.beta2, 0.9999),
                                            alpha=0.0, eps=c_adamw.eps, weight_decay=c_adamw.weight_decay,
                                            weight_decouple=True, cautious=True),
        "c-lion": lambda m, o: po.Lion(m + o, lr=c_lion.lr, betas=(c_lion.beta1, c_lion.beta2),
                                       weight_decay=c_lion.weight_decay, cautious=True),
        # kron_torch compiles its kernels (torch.compile) where ours runs eagerly.
        "psgd-kron": lambda m, o: kron_torch.Kron(
            m + o, lr=kron.lr, b1=kron.momentum, weight_decay=kron.weight_decay, precond_lr=kron.precond_lr,
            precond_init_scale=kron.precond_init_scale, max_size_triangular=kron.max_size_triangular,
            min_ndim_triangular=kron.min_ndim_triangular, merge_dims=kron.merge_dims),
        "adam8bit": lambda m, o: bitsandbytes.optim.AdamW8bit(m + o, lr=a8.lr, betas=(a8.beta1, a8.beta2),
                                                              eps=a8.eps, weight_decay=a8.weight_decay,
                                                              min_8bit_size=a8.min_8bit_size),
        "adam-mini": adam_mini_ref,
        "galore": low_rank(galore_torch.GaLoreAdamW, c("galore"), proj_type=c("galore").proj_type),
        # pytorch_optimizer's APOLLO maps a rank-r update back (the paper scales the full gradient): not the same work.
        "apollo": low_rank(po.APOLLO, c("apollo"), projection_type="random"),
        "apollo-mini": low_rank(po.APOLLO, c("apollo-mini"), projection_type="random"),
    }
