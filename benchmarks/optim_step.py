"""optimizer.step() time and optimizer-state bytes per parameter for every registered optimizer.

    python benchmarks/optim_step.py [--preset gpt2-124m] [--steps 5] [--only muon,soap] [--device cpu]

The parameter set is a real model's (GPT-2 124M by default: the routing sees embeddings, head,
vectors and hidden matrices as in training). Gradients are fixed random tensors, so only the update
is timed. Each optimizer is timed over `--steps` steps after one warm-up step (which creates state);
optimizers that refresh a preconditioner every k steps are timed over a window that includes
refreshes at their configured rate, so the figure is the amortised cost per step. Rows print ratios
to AdamW measured in the same run; where a reference implementation is installed it is timed on the
same parameters and its ratio printed beside ours.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import torch

from optbench import optim
from optbench.config.compose import compose
from optbench.models import build
from optbench.optim.registry import make_config

Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def reference_factories() -> dict[str, Factory]:
    """Installed reference implementations, built on a flat parameter list with default settings."""
    refs: dict[str, Factory] = {}
    try:
        import lion_pytorch

        refs["lion"] = lambda params: lion_pytorch.Lion(params, lr=1e-4, betas=(0.9, 0.99))
    except ImportError:
        pass
    try:
        import muon

        refs["muon"] = lambda params: muon.SingleDeviceMuon([p for p in params if p.dim() >= 2], lr=0.02)
    except ImportError:
        pass
    try:
        import adopt

        refs["adopt"] = lambda params: adopt.ADOPT(params, lr=1e-3)
    except ImportError:
        pass
    try:
        import pytorch_optimizer as po

        refs["lamb"] = lambda params: po.Lamb(params, lr=1e-3)
        refs["ademamix"] = lambda params: po.AdEMAMix(params, lr=1e-3)
        refs["soap"] = lambda params: po.SOAP(params, lr=3e-3)
        refs["mars-adamw"] = lambda params: po.MARS(params, lr=3e-3, mars_type="adamw")
    except ImportError:
        pass
    return refs


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


def time_steps(optimizer: torch.optim.Optimizer, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps, after one warm-up step that allocates state."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    optimizer.step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.mean(times)


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

    rows = []
    for name in names:
        for kind, make in (("ours", lambda: optim.build(make_config(name), model)),
                           ("reference", (lambda: references[name](list(model.parameters())))
                            if name in references else None)):
            if make is None:
                continue
            with torch.no_grad():
                for p, saved in zip(model.parameters(), snapshot):
                    p.copy_(saved)
            optimizer = make()
            seconds = time_steps(optimizer, args.steps, device)
            rows.append((name, kind, seconds, state_bytes(optimizer) / n_params))
            del optimizer
            gc.collect()

    adamw = next(s for n, k, s, _ in rows if n == "adamw" and k == "ours")
    ours = {n: s for n, k, s, _ in rows if k == "ours"}
    print(f"{args.preset}: {n_params / 1e6:.1f}M parameters on {device}, {args.steps} timed steps, "
          f"{torch.get_num_threads()} threads")
    print(f"{'optimizer':<14}{'impl':<11}{'ms/step':>10}{'x AdamW':>9}{'ours/ref':>10}{'state B/param':>15}")
    for name, kind, seconds, bytes_per_param in rows:
        vs_ref = f"{ours[name] / seconds:>10.2f}" if kind == "reference" else f"{'':>10}"
        print(f"{name:<14}{kind:<11}{1000 * seconds:>10.1f}{seconds / adamw:>9.2f}{vs_ref}{bytes_per_param:>15.2f}")


if __name__ == "__main__":
    main()
