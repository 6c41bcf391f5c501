"""Synthetic bench output folders with known curves, so the report's numbers can be asserted exactly.

`write_run` writes a real-shaped run directory (trial.json, summary.json, metrics.jsonl, env.json,
config.yaml); `power_law_bench` builds a whole folder whose baseline follows L(D) = 2 + 50 D^-0.3.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from optbench.bench import layout
from optbench.bench.suite import run_key

E, A, ALPHA = 2.0, 50.0, 0.3
TOKENS_PER_STEP = 1_000_000
STEPS = 10
NOISE = (-0.002, 0.0, 0.002)
"""Per-seed offsets of every loss: zero mean, so means over seeds stay exactly on the law."""
N_PARAMS = 1_000


def law(tokens: float) -> float:
    return E + A * tokens ** -ALPHA


def write_suite(out: Path, scenarios: Sequence[dict[str, Any]], optimizers: Sequence[str],
                seeds: Sequence[int] = (0, 1, 2), baseline: str = "adamw") -> None:
    suite = {"name": "synthetic", "description": "a suite with known curves", "baseline": baseline,
             "scenarios": list(scenarios), "optimizers": [{"name": n} for n in optimizers],
             "tuning": {"method": "grid", "seed": 0}, "final": {"seeds": list(seeds)}}
    out.mkdir(parents=True, exist_ok=True)
    layout.suite_file(out).write_text(OmegaConf.to_yaml(OmegaConf.create(suite)))


def write_run(out: Path, scenario: str, optimizer: str, seed: int, hparams: dict[str, Any],
              losses: Sequence[float], *, phases: Sequence[str] = ("final",), status: str = "completed",
              tokens_per_step: int = TOKENS_PER_STEP, step_time: float = 0.1, state_bytes_per_param: float = 8.0,
              summary: bool = True, metrics: bool = True, summary_extra: dict[str, Any] | None = None,
              records: Sequence[dict[str, Any]] = ()) -> Path:
    """A run with one eval per step k = 1..len(losses) (val loss losses[k-1]) after a step-0 eval, and a
    train line per step whose throughput gives `step_time` seconds per step; `records` (e.g. kind: dynamics) are
    appended to metrics.jsonl and `summary_extra` to summary.json."""
    path = layout.run_dir(out, scenario, optimizer, run_key(hparams, seed))
    path.mkdir(parents=True)
    trial = {"suite": "synthetic", "scenario": scenario, "optimizer": optimizer, "hparams": hparams,
             "seed": seed, "phases": list(phases), "overrides": [f"train.seed={seed}"]}
    layout.trial_file(path).write_text(json.dumps(trial))
    lines = [{"val_loss": 11.0, "val_ppl": 6e4, "val_acc": 0.0, "step": 0, "tokens": 0, "time_s": 0.0}]
    for step, loss in enumerate(losses, start=1):
        common = {"step": step, "tokens": step * tokens_per_step, "time_s": round(step * step_time, 6)}
        lines.append({"loss": loss + 0.01, "lr": hparams.get("lr", 1e-3), "grad_norm": 1.0,
                      "tokens_per_s": tokens_per_step / step_time, **common})
        lines.append({"val_loss": loss, "val_ppl": 2.718 ** loss, "val_acc": 0.5, **common})
    if metrics:
        (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in [*lines, *records]))
    if summary:
        steps = len(losses)
        record = {"status": status, "final_val_loss": losses[-1] if losses else None,
                  "best_val_loss": min(losses) if losses else None, "steps": steps,
                  "tokens": steps * tokens_per_step, "wall_s": steps * step_time,
                  "tokens_per_s": tokens_per_step / step_time, "step_time_s": step_time,
                  "peak_mem_bytes": 64 * 2**20,
                  "optim_state_bytes": int(state_bytes_per_param * N_PARAMS), "n_params": N_PARAMS,
                  "n_params_non_embedding": N_PARAMS // 2, "run_dir": str(path), **(summary_extra or {})}
        (path / "summary.json").write_text(json.dumps(record))
    env = {"git_commit": "abc123", "git_dirty": False, "host": "test",
           "versions": {"optbench": "0.1.0", "torch": "2.6.0", "optuna": "4.0.0"}}
    (path / "env.json").write_text(json.dumps(env))
    (path / "config.yaml").write_text(f"optim:\n  name: {optimizer}\n")
    return path


def curve(scale: float, offset: float = 0.0) -> list[float]:
    """Val losses of an optimizer worth `scale` baseline tokens per token: L(scale * D) at each eval."""
    return [law(scale * k * TOKENS_PER_STEP) + offset for k in range(1, STEPS + 1)]


FINAL_HP = {"adamw": {"lr": 1e-3, "beta2": 0.95}, "muon": {"lr": 0.02, "momentum": 0.95},
            "lion": {"lr": 1e-4, "beta2": 0.99}}
SCALE = {"adamw": 1.0, "muon": 2.0, "lion": 0.5}
STEP_TIME = {"adamw": 0.1, "muon": 0.12, "lion": 0.09}
STATE = {"adamw": 8.0, "muon": 4.0, "lion": 4.0}


LOSS_SPIKES = {"adamw": (0, 1, 2), "muon": (1, 1, 1), "lion": (0, 0, 0)}
GRAD_SPIKES = {"adamw": (0, 0, 3), "muon": (2, 0, 1), "lion": (0, 0, 0)}
MAX_ATTN_LOGIT = {"adamw": (10.0, 12.5, 11.0), "muon": (5.0, 6.0, 7.0), "lion": (20.0, 3.0, 4.0)}
"""Per seed 0, 1, 2 of the final runs: what summary.json's stability fields say."""
DYNAMICS_STEPS = (5, 10)
UPDATE_RMS = {"adamw": 1e-3, "muon": 4e-3}
"""Final runs of these optimizers carry dynamics records (diag.every = 5): see `update_rms`."""


PART_FACTOR = {"attn": 1.0, "mlp": 2.0, "ln": 10.0}
"""Three parameters per block, so a block's median (2) differs from its mean."""


def update_rms(name: str, seed: int, step: int, layer: int, part: str) -> float:
    """A parameter's update RMS in the synthetic dynamics: grows with depth, shrinks with the step."""
    return UPDATE_RMS[name] * (1 + layer) * PART_FACTOR[part] * (1 + seed) / step


def dynamics_records(name: str, seed: int) -> list[dict[str, Any]]:
    """kind: dynamics records for two blocks (three parameters each) and an embedding outside the blocks."""
    records = []
    for step in DYNAMICS_STEPS:
        params = {f"transformer.h.{layer}.{part}.weight": {"update_rms": update_rms(name, seed, step, layer, part)}
                  for layer in (0, 1) for part in PART_FACTOR}
        params["transformer.wte.weight"] = {"update_rms": 1.0}
        records.append({"kind": "dynamics", "step": step, "tokens": step * TOKENS_PER_STEP, "params": params,
                        "roles": {}, "attention": []})
    return records


def power_law_bench(out: Path, target: float | None = 2.5) -> Path:
    """One scenario "s" (target 2.5): adamw on the law, muon worth 2x tokens, lion 0.5x, sgd tuned but
    never finalised; tuning grids with a diverged muon run, a pruned lion run and a crashed lion run. Final runs
    record spikes and attention logits (LOSS_SPIKES, ...); adamw's and muon's also dynamics."""
    write_suite(out, [{"name": "s", "target_loss": target}], ["adamw", "muon", "lion", "sgd"])
    for name, hp in FINAL_HP.items():
        for seed, noise in zip((0, 1, 2), NOISE):
            stable = {"loss_spikes": LOSS_SPIKES[name][seed], "grad_spikes": GRAD_SPIKES[name][seed],
                      "max_attn_logit": MAX_ATTN_LOGIT[name][seed]}
            write_run(out, "s", name, seed, hp, curve(SCALE[name], noise),
                      phases=("tune", "final") if seed == 0 else ("final",),
                      step_time=STEP_TIME[name], state_bytes_per_param=STATE[name], summary_extra=stable,
                      records=dynamics_records(name, seed) if name in UPDATE_RMS else ())
        for lr_factor, offset in ((0.1, 0.05), (10.0, 0.03)):
            tuned = {**hp, "lr": hp["lr"] * lr_factor}
            status = "diverged" if name == "muon" and lr_factor == 10.0 else "completed"
            write_run(out, "s", name, 0, tuned, curve(SCALE[name], offset), phases=("tune",), status=status)
    write_run(out, "s", "lion", 0, {"lr": 3e-3, "beta2": 0.99}, curve(0.5, 0.2)[:3], phases=("tune",),
              status="pruned")
    write_run(out, "s", "lion", 0, {"lr": 1e-2, "beta2": 0.99}, curve(0.5)[:2], phases=("tune",),
              summary=False)
    write_run(out, "s", "sgd", 0, {"lr": 0.1, "momentum": 0.9}, curve(0.3, 0.1), phases=("tune",))
    return out
