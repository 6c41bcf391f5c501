"""Training speed on nanoGPT's CPU recipe: optbench's trainer against a bare loop, in the same run.

    python benchmarks/train_speed.py [--steps 100] [--rounds 3] [overrides ...]
    python benchmarks/train_speed.py --optimizers adamw muon soap lion [--steps 100] [--rounds 3]

The second form measures each optimizer's median step time (the trainer's timed interval: forward, backward,
update) with diagnostics off (one log line per run) and on (a log line with every diagnostic at every step),
and prints ratios to AdamW's step time measured in the same rounds.

The baseline is the minimal loop nanoGPT runs (random windows, forward, backward, clip, AdamW step)
on the same model and data; optbench's Trainer adds schedules, diagnostics at log steps, logging
sinks and the run directory. Rounds alternate the two so machine noise hits both alike. Prints ms/step,
tokens/s and the ratio; the shared nanoGPT figure (55 ms/step on this machine kind) is for reference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from optbench import data as datalib
from optbench import models
from optbench.config.compose import compose
from optbench.training.trainer import Trainer

NANOGPT_MS_PER_STEP = 55.0  # ../shared/data/README.md: nanoGPT's recipe on a 2-core machine of this kind


def bare_loop_ms(cfg, steps: int) -> float:
    """ms/step of a plain nanoGPT-style loop on the same model, data and AdamW settings."""
    prepared = datalib.load(cfg.data, progress=False)
    tokens = np.asarray(prepared.tokens("train"))
    torch.manual_seed(cfg.train.seed)
    model = models.build(cfg.model, prepared.vocab_size, cfg.train.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            weight_decay=cfg.optim.weight_decay)
    rng = np.random.default_rng(0)
    B, T = cfg.train.batch_size, cfg.train.seq_len
    interval, times, start = 10, [], time.perf_counter()
    for step in range(1, steps + 1):
        ix = rng.integers(0, len(tokens) - T - 1, B)
        x = torch.from_numpy(np.stack([tokens[i:i + T] for i in ix]).astype(np.int64))
        y = torch.from_numpy(np.stack([tokens[i + 1:i + T + 1] for i in ix]).astype(np.int64))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % interval == 0:  # timed over 10-step intervals, as the Trainer's tokens/s is
            now = time.perf_counter()
            times.append((now - start) / interval)
            start = now
    return 1000 * statistics.median(times[1:])


def optbench_ms(overrides: list[str], steps: int, log_every: int = 10) -> float:
    """ms/step of optbench's Trainer: the median of its timed steps, warm-up left out (summary.json)."""
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose([*overrides, f"train.steps={steps}", "eval.every=0", "eval.batches=1",
                       "eval.sample_tokens=0", f"run.log_every={log_every}", "run.progress=false",
                       f"run.dir={run_dir}/run"])
        summary = Trainer(cfg).train()
    return 1000 * summary["step_time_s"]


def compare_optimizers(overrides: list[str], names: list[str], steps: int, rounds: int) -> None:
    """Step time per optimizer with diagnostics off and on, ratios to AdamW measured in the same rounds."""
    names = ["adamw", *[n for n in names if n != "adamw"]]
    settings = {"off": steps, "on": 1}  # run.log_every: one log line, or diagnostics at every step
    times: dict[tuple[str, str], list[float]] = {(n, d): [] for n in names for d in settings}
    for _ in range(rounds):  # alternated, so the machine's noise reaches every cell alike
        for name in names:
            for diag, log_every in settings.items():
                times[name, diag].append(optbench_ms([*overrides, f"optim={name}"], steps, log_every))
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"recipe: defaults {' '.join(overrides)}  ({rounds} rounds of {steps} steps, {torch.get_num_threads()} threads)")
    print(f"{'optimizer':<10}{'ms/step off':>13}{'ms/step on':>12}{'vs adamw off':>14}{'vs adamw on':>13}"
          f"{'on / off':>10}")
    for name in names:
        off, on = median[name, "off"], median[name, "on"]
        print(f"{name:<10}{off:>13.1f}{on:>12.1f}{off / median['adamw', 'off']:>14.2f}"
              f"{on / median['adamw', 'on']:>13.2f}{on / off:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--optimizers", nargs="+", help="compare these optimizers' step times with AdamW's")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.optimizers:  # the default config is nanoGPT's CPU recipe; the experiment fixes AdamW's own keys
        compare_optimizers(args.overrides, args.optimizers, args.steps, args.rounds)
        return
    overrides = ["experiment=nanogpt-shakespeare", *args.overrides]
    cfg = compose(overrides)
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.train.seq_len
    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop_ms(cfg, args.steps))
        ours.append(optbench_ms(overrides, args.steps))
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"recipe: {' '.join(overrides)}  ({args.rounds} rounds of {args.steps} steps, {torch.get_num_threads()} threads)")
    print(f"{'loop':<22}{'ms/step':>10}{'tokens/s':>12}{'ratio':>8}")
    print(f"{'bare loop (baseline)':<22}{b:>10.1f}{1000 * tokens_per_step / b:>12,.0f}{1.0:>8.2f}")
    print(f"{'optbench Trainer':<22}{o:>10.1f}{1000 * tokens_per_step / o:>12,.0f}{o / b:>8.2f}")
    print(f"{'nanoGPT (reference)':<22}{NANOGPT_MS_PER_STEP:>10.1f}{1000 * tokens_per_step / NANOGPT_MS_PER_STEP:>12,.0f}"
          f"{NANOGPT_MS_PER_STEP / b:>8.2f}   (published figure, not measured in this run)")


if __name__ == "__main__":
    main()
