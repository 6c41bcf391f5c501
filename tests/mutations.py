"""Deliberate breakages of the trainer's load-bearing behaviours (and of the few update rules checked only
against golden data), each of which the test suite must catch.

    python -m tests.mutations                 # every mutation; exit 1 if one survives
    python -m tests.mutations --list          # the mutations and the tests that should catch each
    python -m tests.mutations clip-off ema-never-updated

Each mutation replaces one exact snippet of optbench's source (it must occur exactly once, so a refactor that
moves the code makes the mutation fail loudly instead of silently testing nothing) and runs the named tests with
`-x`. All of it happens in a copy of the package and its tests in a temporary folder, so the working tree is never
changed, whatever stops the script. A mutation the tests pass with "survives": the behaviour it breaks is
untested. The table says which test caught each one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPLICA = "tests/train/test_trainer_replica.py"
CAPABILITIES = "tests/train/test_optimizer_capabilities.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTATIONS = (
    Mutation("clip-off", "optbench/training/trainer.py",
             "if self.cfg.train.grad_clip > 0:", "if False:", (REPLICA,),
             "gradient clipping never applied"),
    Mutation("clip-wrong-threshold", "optbench/training/trainer.py",
             "clip_grads_with_norm_(self.params, self.cfg.train.grad_clip, grad_norm)",
             "clip_grads_with_norm_(self.params, 2 * self.cfg.train.grad_clip, grad_norm)", (REPLICA,),
             "clipped to twice train.grad_clip"),
    Mutation("diagnostics-after-clip", "optbench/training/trainer.py",
             "grad_stats = diagnostics.gradient_stats(self.params) if is_log else {}  # before clipping changes them\n"
             "        with self.timer.timed():\n"
             "            self.clip(norm)\n",
             "with self.timer.timed():\n"
             "            self.clip(norm)\n"
             "        grad_stats = diagnostics.gradient_stats(self.params) if is_log else {}\n"
             "        with self.timer.timed():\n",
             (REPLICA,), "grad_max measured on the clipped gradient (a spike damped by the clip)"),
    Mutation("diagnostics-timed", "optbench/training/trainer.py",
             "grad_stats = diagnostics.gradient_stats(self.params) if is_log else {}  # before clipping changes them\n"
             "        with self.timer.timed():\n",
             "with self.timer.timed():\n"
             "            grad_stats = diagnostics.gradient_stats(self.params) if is_log else {}\n",
             ("tests/train/test_timing.py",), "gradient diagnostics counted in the step time and tokens/s"),
    Mutation("accumulation-unscaled", "optbench/training/trainer.py",
             "y.view(-1)) / len(micros)", "y.view(-1))", (REPLICA,),
             "micro-batch losses summed instead of averaged over grad_accum"),
    Mutation("logged-loss-last-micro", "optbench/training/trainer.py",
             "total_loss += ce.detach()", "total_loss = ce.detach() * len(micros)", (REPLICA,),
             "the logged loss is the last micro-batch's, not the step's mean"),
    Mutation("schedule-off", "optbench/training/trainer.py",
             "lr_scale = lr_multiplier(step, cfg.steps, self.cfg.schedule)", "lr_scale = 1.0", (REPLICA,),
             "the learning-rate schedule never applied"),
    Mutation("schedule-off-by-one", "optbench/training/trainer.py",
             "lr_scale = lr_multiplier(step, cfg.steps, self.cfg.schedule)",
             "lr_scale = lr_multiplier(step + 1, cfg.steps, self.cfg.schedule)", (REPLICA,),
             "the schedule read one step ahead"),
    Mutation("schedule-first-group-lr", "optbench/training/trainer.py",
             'group["lr"] = group["base_lr"] * lr_scale',
             'group["lr"] = self.optimizer.param_groups[0]["base_lr"] * lr_scale', (REPLICA,),
             "every group scheduled from the first group's lr (Muon's backup, muP multipliers lost)"),
    Mutation("decay-on-vectors", "optbench/optim/routing.py",
             'return role in ("matrix", "head") or', 'return True or', (REPLICA,),
             "norm gains and biases decay"),
    Mutation("decay-embeddings-ignored", "optbench/optim/routing.py",
             '(role == "embedding" and cfg.decay_embeddings)', '(role == "embedding")', (REPLICA,),
             "optim.decay_embeddings=false still decays embeddings"),
    Mutation("backup-decays-with-the-main-optimizer", "optbench/optim/routing.py",
             "cfg.backup if part == \"backup\" else cfg, multipliers.get(name))",
             "cfg, multipliers.get(name))",
             ("tests/train/test_routing_plan.py",),
             "a matrix optimizer's backup takes the main optimizer's decay (issue 12's Muon sweep bug)"),
    Mutation("data-order-ignores-micro", "optbench/data/loader.py",
             "np.random.default_rng([self.data_seed, step, micro])",
             "np.random.default_rng([self.data_seed, step, 0])", (REPLICA,),
             "every micro-batch of a step is the same batch"),
    Mutation("data-order-ignores-seed", "optbench/data/loader.py",
             "np.random.default_rng([self.data_seed, step, micro])",
             "np.random.default_rng([0, step, micro])", (REPLICA,),
             "train.data_seed has no effect"),
    Mutation("ema-never-updated", "optbench/training/trainer.py",
             "self.averager.update(self.model, self.step)", "pass", (REPLICA,),
             "the weight average stays at the initial weights"),
    Mutation("ema-decay-flipped", "optbench/training/averaging.py",
             "get_ema_multi_avg_fn(cfg.weight_avg_decay)", "get_ema_multi_avg_fn(1 - cfg.weight_avg_decay)",
             (REPLICA,), "the EMA weighs the new weights by the decay"),
    Mutation("schedule-free-evaluates-training-point", "optbench/training/optimizer_hooks.py",
             "        self.optimizer.eval()\n", "", (CAPABILITIES,),
             "Schedule-Free evaluated at y instead of its average x"),
    Mutation("sophia-hessian-pass-skipped", "optbench/training/trainer.py",
             "if self.hooks.wants_hessian(self.step):", "if False:", (CAPABILITIES,),
             "Sophia's Hessian estimate never refreshed"),
    Mutation("sophia-hessian-argmax-labels", "optbench/training/optimizer_hooks.py",
             "torch.multinomial(F.softmax(flat, dim=-1), 1, generator=generator).view(-1)",
             "flat.argmax(-1)", (CAPABILITIES,),
             "the Hessian pass uses the model's argmax instead of labels sampled from it"),
    Mutation("sophia-hessian-every-off-by-one", "optbench/training/optimizer_hooks.py",
             "steps_done % self.optimizer.hessian_every == 0",
             "(steps_done + 1) % self.optimizer.hessian_every == 0", (CAPABILITIES,),
             "the Hessian pass one step early"),
    Mutation("sgd-nesterov-ignored", "optbench/optim/algorithms/sgd.py",
             "nesterov=cfg.nesterov)", "nesterov=False)", (REPLICA,),
             "optim.nesterov has no effect"),
    Mutation("ddp-gradients-not-averaged", "optbench/training/trainer.py",
             "gradient_sync(self.replica, enabled=i == len(micros) - 1)", "gradient_sync(self.replica, enabled=False)",
             ("tests/reliability/test_distributed.py::test_two_ranks_equal_one_process",),
             "under torchrun each rank steps on its own gradients"),
    Mutation("divergence-threshold-ignored", "optbench/training/trainer.py",
             "loss > cfg.train.diverge_loss", "loss > 100 * cfg.train.diverge_loss",
             ("tests/reliability/test_divergence.py",), "train.diverge_loss not honoured"),
    Mutation("caller-rng-not-restored", "optbench/training/rng.py",
             "    finally:\n        set_rng_state(saved)\n", "    finally:\n        pass\n",
             ("tests/train/test_trainer.py::test_a_run_leaves_the_callers_random_streams_as_they_were",),
             "a run reseeds the caller's random streams"),
    Mutation("velo-feature-order", "optbench/optim/learned/features.py",
             "parts = [batch_g, torch.clip(batch_g, -0.1, 0.1), p.unsqueeze(-1),",
             "parts = [torch.clip(batch_g, -0.1, 0.1), batch_g, p.unsqueeze(-1),", ("tests/optim/test_velo.py",),
             "VeLO's first two per-parameter inputs swapped"),
    Mutation("mulo-feature-order", "optbench/optim/learned/features.py",
             "parts = [g.unsqueeze(-1), p.unsqueeze(-1), mom,", "parts = [p.unsqueeze(-1), g.unsqueeze(-1), mom,",
             ("tests/optim/test_mulo.py",), "muLO's gradient and parameter inputs swapped"),
    Mutation("threads-not-restored", "optbench/training/device.py",
             "        torch.set_num_threads(previous)\n", "        pass\n",
             ("tests/train/test_trainer.py::test_train_threads_applies_to_the_run_and_is_put_back",),
             "a run leaves the process's torch thread count changed"),
    Mutation("dynamics-rel-update-after-the-step", "optbench/training/dynamics.py",
             "(s.update_sq / s.before_sq).sqrt()", "(s.update_sq / s.weight_sq).sqrt()",
             ("tests/train/test_dynamics.py::test_each_value_matches_a_hand_computation_for_sgd",),
             "rel_update divided by the weights after the update instead of those it was applied to"),
    Mutation("attention-probe-draws-random-numbers", "optbench/training/attention_probe.py",
             "    model.eval()\n    try:\n        with isolated_rng(), ", "    model.train()\n    try:\n        with ",
             ("tests/train/test_dynamics.py::test_diag_steps_change_nothing_about_training",),
             "the probe's forward runs with dropout on the run's random streams, so diag steps change training"),
    Mutation("tuning-stops-at-the-edge", "optbench/bench/plan.py",
             "    return _propose_extension(suite, space, trials, seed)\n", "    return None\n",
             ("tests/bench/test_extend.py",), "a best value on a grid edge is not walked past"),
    Mutation("edge-step-inward", "optbench/bench/extend.py",
             "        value = edge * (edge / inner)\n", "        value = edge * (inner / edge)\n",
             ("tests/bench/test_extend.py",), "the walk beyond an edge steps back into the grid"),
    Mutation("protocol-read-from-registry", "optbench/bench/suite.py",
             "    return entry.space is not None and entry.defaults is not None\n", "    return False\n",
             ("tests/bench/test_protocol.py",), "planning and the report read the live registry, not OUT/suite.yaml"),
    Mutation("studies-share-a-seed", "optbench/bench/plan.py",
             "space, seed = search_space(entry), suite.tuning.seed + index", "space, seed = search_space(entry), suite.tuning.seed",
             ("tests/bench/test_plan.py",), "repeated tuning studies all train at the same seed"),
)

FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def copy_repository(into: Path) -> Path:
    """The package, its tests and pytest's settings under `into`/repo, with `into`/shared pointing at the data
    folder beside the real repository (the tests find ../shared/data relative to themselves)."""
    repo = into / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("optbench", "tests"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", repo / "pyproject.toml")
    if (ROOT.parent / "shared").exists():
        (into / "shared").symlink_to(ROOT.parent / "shared")
    return repo


def pytest(repo: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess:
    # The copy comes first on the path of pytest and of every process a test starts (`python -m optbench`,
    # torchrun): the editable install's finder only answers after the path has been searched.
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE", *tests],
                          cwd=repo, capture_output=True, text=True, env=env)


def run(mutation: Mutation, repo: Path) -> tuple[str | None, float]:
    """(the first test that failed, or None if the mutation survived; seconds), with `repo` a copy."""
    path = repo / mutation.path
    original = path.read_bytes()
    count = original.decode().count(mutation.old)
    if count != 1:
        raise SystemExit(f"mutation {mutation.name}: {mutation.path} contains the snippet {count} times "
                         f"(expected once); update tests/mutations.py to the code as it is now")
    path.write_text(original.decode().replace(mutation.old, mutation.new))
    start = time.perf_counter()
    try:
        done = pytest(repo, mutation.tests)
    finally:
        path.write_bytes(original)
    seconds = time.perf_counter() - start
    if done.returncode == 0:
        return None, seconds
    if done.returncode != 1:  # 2-5: interrupted, internal error, usage error, nothing collected
        raise SystemExit(f"mutation {mutation.name}: pytest exited {done.returncode}, not a test failure:\n"
                         f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    caught = FAILED.search(done.stdout)
    return (caught.group(1) if caught else "(failed)"), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        print(f"unknown mutation {unknown[0]!r}; valid: {', '.join(by_name)}", file=sys.stderr)
        return 2
    chosen = [by_name[n] for n in args.names] or list(MUTATIONS)
    if args.list:
        for m in chosen:
            print(f"{m.name:<40} {m.path:<36} {m.why}; tests: {' '.join(m.tests)}")
        return 0
    survivors = []
    print("| mutation | breaks | caught by | s |\n|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="optbench-mutants-") as tmp:
        repo = copy_repository(Path(tmp))
        control = pytest(repo, tuple(dict.fromkeys(t for m in chosen for t in m.tests)))
        if control.returncode != 0:  # a mutation "caught" by a test that fails anyway would prove nothing
            print(f"the tests fail without any mutation:\n{control.stdout[-3000:]}", file=sys.stderr)
            return 1
        for m in chosen:
            caught, seconds = run(m, repo)
            if caught is None:
                survivors.append(m.name)
            print(f"| {m.name} | {m.why} | {caught or '**SURVIVED**'} | {seconds:.0f} |", flush=True)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutations caught" +
          (f"; survived: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
