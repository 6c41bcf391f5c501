"""Training throughput of each model family at (nearly) equal parameter count, against Llama in the same run.

    python benchmarks/model_speed.py [--params 10e6] [--layers 4] [--batch 8] [--seq 256] [--steps 6]
                                     [--rounds 3] [--device cpu|cuda] [--dtype float32|bfloat16]

Each family starts from its `<family>-debug` preset and gets `--layers` layers; its width is the multiple of
64 whose non-embedding parameter count comes closest to `--params` (for MoE: all experts counted; the
active count, what a token computes with, is printed beside it). A step is forward + backward + AdamW on random tokens. Rounds alternate
the families so machine noise hits all alike; the table gives the median ms/step over rounds, tokens/s,
and the ratio of tokens/s to Llama's. `gpt2+pom` is gpt2 with `model.mixer=pom`; `llama+parallel` is
llama with `model.parallel_block=true`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from optbench import models
from optbench.config.compose import compose

VOCAB = 4096
"""A small vocabulary, so the embedding table does not dominate a 10M-parameter comparison."""
VARIANTS = {"gpt2+pom": ("gpt2", {"mixer": "pom"}), "llama+parallel": ("llama", {"parallel_block": True})}


def variants() -> dict[str, tuple[str, dict]]:
    """Every registered family, plus the block and mixer options worth timing."""
    return {**{name: (name, {}) for name in sorted(models.MODELS)}, **VARIANTS}


def sized(family: str, extra: dict, layers: int, target: float, seq: int):
    """The config of `family` with `layers` layers and the width whose non-embedding count is nearest `target`."""
    base = compose([f"model={family}-debug"]).model
    best = None
    for width in range(64, 2049, 64):
        heads = max(1, width // 64)
        try:
            cfg = dataclasses.replace(base, n_layer=layers, n_embd=width, n_head=heads, **extra)
        except Exception:  # a width this family's checks refuse (e.g. head counts): skip it
            continue
        with torch.device("meta"):
            model = models.build(cfg, VOCAB, seq)
        gap = abs(model.num_params(embeddings=False) - target)
        if best is None or gap < best[0]:
            best = (gap, cfg, model.num_params(embeddings=False), model.num_active_params())
    return best[1:]


def step_ms(cfg, batch: int, seq: int, steps: int, device: torch.device, dtype: torch.dtype) -> float:
    torch.manual_seed(0)
    model = models.build(cfg, VOCAB, seq).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, VOCAB, (batch, seq), device=device)
    times = []
    for i in range(steps + 1):  # the first step warms up (allocations, kernels), untimed
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1)[:-1], x.flatten()[1:])
        aux = model.auxiliary_losses()
        (loss + sum(aux.values())).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=10e6)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--only", help="comma-separated variants (default: all)")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    chosen = variants()
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",") or k == "llama"}
    configs = {name: sized(family, extra, args.layers, args.params, args.seq)
               for name, (family, extra) in chosen.items()}
    ms: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (cfg, _, _) in configs.items():
            ms[name].append(step_ms(cfg, args.batch, args.seq, args.steps, device, dtype))
    tokens = args.batch * args.seq
    base = tokens / (statistics.median(ms["llama"]) / 1000)
    print(f"device {device}, {args.dtype}, batch {args.batch} x {args.seq} tokens, {args.layers} layers, "
          f"target {args.params / 1e6:.1f}M non-embedding parameters, torch {torch.__version__}")
    print(f"{'variant':<16}{'width':>6}{'params':>9}{'active':>9}{'ms/step':>10}{'tokens/s':>11}{'x llama':>9}")
    for name, (cfg, params, active) in configs.items():
        median = statistics.median(ms[name])
        rate = tokens / (median / 1000)
        print(f"{name:<16}{cfg.n_embd:>6}{params / 1e6:>8.2f}M{active / 1e6:>8.2f}M{median:>10.1f}"
              f"{rate:>11,.0f}{rate / base:>9.2f}")


if __name__ == "__main__":
    main()
