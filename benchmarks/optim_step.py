"""optimizer.step() time and optimizer-state bytes per parameter for every registered optimizer.

    python benchmarks/optim_step.py [--preset gpt2-124m] [--steps 5] [--only muon,soap] [--device cpu]
    python benchmarks/optim_step.py --world-size 4 [...]     # under DDP and FSDP2 on 4 ranks: optim_step_ranks.py

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
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from references import reference_factories

from optbench import optim
from optbench.config.compose import compose
from optbench.models import build
from optbench.optim.algorithms import mulo, velo
from optbench.optim.memory import state_bytes
from optbench.optim.registry import make_config
from optbench.optim.routing import route
from optbench.training.optimizer_hooks import OptimizerHooks


def split_matrices(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Hidden matrices (routing's `matrix` role) and everything else, for references that need the split."""
    roles = {id(r.param): r.role for r in route(model, make_config("adamw"))}
    params = list(dict.fromkeys(model.parameters()))
    return ([p for p in params if roles[id(p)] == "matrix"], [p for p in params if roles[id(p)] != "matrix"])


def stepper(optimizer: torch.optim.Optimizer, name: str | None) -> Callable[[], None]:
    """One training step's optimizer calls: ours goes through the trainer's hooks (VeLO reads the loss and
    the horizon), a reference just steps."""
    if name is None:
        return optimizer.step
    hooks = OptimizerHooks(optimizer, optim.get(name).capabilities)
    hooks.before_training(1000)

    def step() -> None:
        hooks.before_step(3.0)
        optimizer.step()
    return step


def learned_weights() -> dict[str, dict[str, str]]:
    """optim.weights of the learned optimizers: random ones (the time of an update does not depend on them)."""
    weights_dir = Path(tempfile.mkdtemp(prefix="optbench-random-weights-"))
    return {name: {"weights": str(module.write_random_weights(weights_dir / name))}
            for name, module in (("velo", velo), ("mulo", mulo))}


def time_interleaved(steppers: list[Callable[[], None]], steps: int, device: torch.device) -> list[float]:
    """Median seconds per step of each optimizer, stepping them in turn so machine noise hits all alike.

    Each takes one untimed warm-up step first (it allocates state). They share the parameters, which
    only drift: the time of an update does not depend on the values.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steppers:
        step()
    sync()
    times: list[list[float]] = [[] for _ in steppers]
    for _ in range(steps):
        for step, samples in zip(steppers, times):
            start = time.perf_counter()
            step()
            sync()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a model override on top of the preset (model.n_layer=4), repeatable")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated optimizer names (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-reference", default="",
                        help="comma-separated names whose reference is not run (muon's bf16 Newton–Schulz is "
                             "emulated on CPU: minutes per step at 124M)")
    parser.add_argument("--world-size", type=int, default=1,
                        help="ranks (torchrun; gloo on CPU, nccl on GPU): step time and bytes sent per step under DDP "
                             "and FSDP2 instead")
    parser.add_argument("--comm-steps", type=int, default=10,
                        help="--world-size: steps the bytes are averaged over (10 hold one SOAP eigenbasis refresh)")
    args = parser.parse_args()
    if args.world_size < 1:
        parser.error(f"--world-size {args.world_size} must be at least 1")
    if args.world_size > 1:
        import optim_step_ranks

        optim_step_ranks.main(args)
        return
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = build(compose([f"model={args.preset}", *args.set]).model, args.vocab, 1024).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    snapshot = [p.detach().clone() for p in model.parameters()]
    references = reference_factories()
    learned = learned_weights()
    names = [n for n in args.only.split(",") if n] or optim.names()

    print(f"{args.preset}: {n_params / 1e6:.1f}M parameters on {device}, median of {args.steps} timed steps, "
          f"{torch.get_num_threads()} threads")
    print(f"{'optimizer':<14}{'impl':<11}{'ms/step':>10}{'x AdamW':>9}{'ours/ref':>10}{'state B/param':>15}", flush=True)
    adamw = None
    for name in ["adamw", *[n for n in names if n != "adamw"]]:  # AdamW first: the baseline of every ratio
        with torch.no_grad():
            for p, saved in zip(model.parameters(), snapshot):
                p.copy_(saved)
        optimizers = {"ours": optim.build(make_config(name, **learned.get(name, {})), model)}
        if name in references and name not in args.skip_reference.split(","):
            optimizers["reference"] = references[name](*split_matrices(model))
        steppers = [stepper(opt, name if kind == "ours" else None) for kind, opt in optimizers.items()]
        seconds = time_interleaved(steppers, args.steps, device)
        adamw = adamw or seconds[0]
        for (kind, optimizer), sec in zip(optimizers.items(), seconds):
            vs_ref = f"{seconds[0] / sec:>10.2f}" if kind == "reference" else f"{'':>10}"
            print(f"{name:<14}{kind:<11}{1000 * sec:>10.1f}{sec / adamw:>9.2f}{vs_ref}"
                  f"{state_bytes(optimizer) / n_params:>15.2f}", flush=True)
        del optimizers
        gc.collect()


if __name__ == "__main__":
    main()
