"""optimizer.step() time and optimizer-state bytes per parameter for every registered optimizer.

    python benchmarks/optim_step.py [--preset gpt2-124m] [--steps 5] [--only muon,soap] [--device cpu]

The parameter set is a real model's (GPT-2 124M by default: the routing sees embeddings, head,
vectors and hidden matrices as in training). Gradients are fixed random tensors, so only the update
is timed. Each optimizer takes one warm-up step (which creates state), then the median of `--steps`
timed steps is reported; where a reference implementation is installed it is built on the same
parameters and stepped in turn with ours, and the ours/reference ratio printed. Rows also print
ratios to AdamW from the same run. Preconditioner refreshes (SOAP every 10 steps, Shampoo's roots
every 100 after step 100) are amortised away by the median: the table shows a typical step.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import time
from collections.abc import Callable

import torch

from optbench import optim
from optbench.config.compose import compose
from optbench.models import build
from optbench.optim.registry import make_config
from optbench.optim.routing import route

Factory = Callable[[list[torch.Tensor], list[torch.Tensor]], torch.optim.Optimizer]
"""(hidden matrices, all other parameters) -> a reference optimizer over both."""


def reference_factories() -> dict[str, Factory]:
    """Installed reference implementations with our defaults' hyperparameters, on (matrices, others)."""
    import adopt
    import lion_pytorch
    import muon
    import pytorch_optimizer as po
    import sophia_opt

    def cfg(name):
        return make_config(name)

    def sophia(params, c=cfg("sophiag")):
        opt = sophia_opt.SophiaG(params, lr=c.lr, betas=(c.beta1, c.beta2), rho=c.rho, weight_decay=c.weight_decay)
        opt.step = functools.partial(opt.step, bs=4096)  # the package takes B at every step
        return opt

    def muon_aux(matrices, others, c=cfg("muon")):
        return muon.SingleDeviceMuonWithAuxAdam([
            dict(params=matrices, use_muon=True, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
            dict(params=others, use_muon=False, lr=c.backup.lr, betas=(c.backup.beta1, c.backup.beta2),
                 eps=c.backup.eps, weight_decay=c.backup.weight_decay)])

    def mars(kind, c):
        return lambda m, o: po.MARS(m + o, lr=c.lr, betas=(c.beta1, getattr(c, "beta2", 0.99)), gamma=c.gamma,
                                    weight_decay=c.weight_decay, mars_type=kind)

    lion, adopt_c, lamb, ademamix, soap, signum = (cfg(n) for n in ("lion", "adopt", "lamb", "ademamix", "soap",
                                                                    "signum"))
    return {
        "lion": lambda m, o: lion_pytorch.Lion(m + o, lr=lion.lr, betas=(lion.beta1, lion.beta2),
                                               weight_decay=lion.weight_decay),
        "muon": muon_aux,
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
        "sophiag": lambda m, o: sophia(m + o),
        "mars-adamw": mars("adamw", cfg("mars-adamw")),
        "mars-lion": mars("lion", cfg("mars-lion")),
    }


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (a hybrid's parts included)."""
    def walk(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(walk(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(v) for v in obj)
        return 0
    state = optimizer.state_dict()
    return walk(state.get("state", {})) + walk(state.get("parts", {}))


def split_matrices(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Hidden matrices (routing's `matrix` role) and everything else, for references that need the split."""
    roles = {id(r.param): r.role for r in route(model, make_config("adamw"))}
    params = list(dict.fromkeys(model.parameters()))
    return ([p for p in params if roles[id(p)] == "matrix"], [p for p in params if roles[id(p)] != "matrix"])


def time_interleaved(optimizers: list[torch.optim.Optimizer], steps: int, device: torch.device) -> list[float]:
    """Median seconds per step of each optimizer, stepping them in turn so machine noise hits all alike.

    Each takes one untimed warm-up step first (it allocates state). They share the parameters, which
    only drift: the time of an update does not depend on the values.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for optimizer in optimizers:
        optimizer.step()
    sync()
    times: list[list[float]] = [[] for _ in optimizers]
    for _ in range(steps):
        for optimizer, samples in zip(optimizers, times):
            start = time.perf_counter()
            optimizer.step()
            sync()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated optimizer names (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = build(compose([f"model={args.preset}"]).model, 50257, 1024).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    snapshot = [p.detach().clone() for p in model.parameters()]
    references = reference_factories()
    names = [n for n in args.only.split(",") if n] or optim.names()

    print(f"{args.preset}: {n_params / 1e6:.1f}M parameters on {device}, median of {args.steps} timed steps, "
          f"{torch.get_num_threads()} threads")
    print(f"{'optimizer':<14}{'impl':<11}{'ms/step':>10}{'x AdamW':>9}{'ours/ref':>10}{'state B/param':>15}", flush=True)
    adamw = None
    for name in ["adamw", *[n for n in names if n != "adamw"]]:  # AdamW first: the baseline of every ratio
        with torch.no_grad():
            for p, saved in zip(model.parameters(), snapshot):
                p.copy_(saved)
        optimizers = {"ours": optim.build(make_config(name), model)}
        if name in references:
            optimizers["reference"] = references[name](*split_matrices(model))
        seconds = time_interleaved(list(optimizers.values()), args.steps, device)
        adamw = adamw or seconds[0]
        for (kind, optimizer), sec in zip(optimizers.items(), seconds):
            vs_ref = f"{seconds[0] / sec:>10.2f}" if kind == "reference" else f"{'':>10}"
            print(f"{name:<14}{kind:<11}{1000 * sec:>10.1f}{sec / adamw:>9.2f}{vs_ref}"
                  f"{state_bytes(optimizer) / n_params:>15.2f}", flush=True)
        del optimizers
        gc.collect()


if __name__ == "__main__":
    main()
