"""The shipped suites (optbench/suites/*.yaml): each one loads, every run it would launch composes into a valid
config (without training anything), and the published settings each one encodes are the ones its header cites.

Parametrised over the folder, so a suite added there is checked too. Model sizes are counted on the meta device.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
from omegaconf import OmegaConf

from optbench.bench.suite import SUITES_DIR, defaults, load_suite, run_overrides, search_space
from optbench.config.compose import compose
from optbench.data.recipes import get_recipe
from optbench.models import build
from optbench.optim.search_space import grid_points

SUITES = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
GPT2_VOCAB = 50257
T5_VOCAB = 32100
"""len(t5-base's tokenizer): 32,000 SentencePiece pieces + 100 extra ids."""
H100_EFFECTIVE_FLOPS = 0.4 * 400e12
"""The suites' compute estimates: 40% MFU of an H100's ~400 TFLOP/s (bf16)."""


def _scenario_ids() -> list[tuple[str, str]]:
    """(suite, scenario) pairs read straight from the YAML, so collection never depends on validation."""
    pairs = []
    for name in SUITES:
        raw = OmegaConf.load(SUITES_DIR / f"{name}.yaml")
        pairs += [(name, str(s["name"])) for s in raw.get("scenarios", [])]
    return pairs


def points(entry) -> list[dict]:
    """The optimizer's default point (registry defaults and fixed values for every tuned key) and the point
    made of each search dimension's first grid point (lowest grid value / first choice)."""
    space = search_space(entry)
    start = defaults(entry)
    return [{key: start[key] for key in space}, {key: grid_points(dim)[0] for key, dim in space.items()}]


def composed(suite, scenario_name: str, optimizer: str | None = None, hparams: dict | None = None, seed: int = 0):
    scenario = suite.scenario(scenario_name)
    entry = suite.optimizer(optimizer or suite.baseline)
    return compose(run_overrides(suite, scenario, entry, hparams or {}, seed))


def dotted(obj, key: str):
    """obj.a.b for key "a.b" (a matrix optimizer's backup.lr)."""
    return functools.reduce(getattr, key.split("."), obj)


def n_params(cfg, vocab: int) -> int:
    with torch.device("meta"):
        return build(cfg.model, vocab, cfg.train.seq_len).num_params()


def tokens_per_step(cfg) -> int:
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.train.seq_len


def lr_grid(suite, optimizer: str) -> tuple:
    return grid_points(search_space(suite.optimizer(optimizer))["lr"])


# ----------------------------------------------------------------------------- every suite


@pytest.mark.parametrize("name", SUITES)
def test_suite_loads_and_is_documented(name):
    suite = load_suite(name)
    assert suite.name == name
    assert suite.description.strip()
    assert (SUITES_DIR / f"{name}.yaml").read_text().startswith("#"), "a suite opens with a comment citing its sources"
    for entry in suite.optimizers:
        assert "lr" in search_space(entry), f"{name}: {entry.name} does not tune its learning rate"


@pytest.mark.parametrize("name, scenario", _scenario_ids())
def test_every_run_of_the_scenario_composes(name, scenario):
    """Each optimizer at its default point and at the lowest point of every search dimension, with the
    scenario and the suite's base: the configurations the bench would train. A scenario may not set optim.*
    (the suite's protocol refuses it), so each optimizer's points are composed on the first scenario it runs in
    and the baseline's on every one (each scenario x optimizer pair is a Hydra composition of its own, ~0.1 s)."""
    suite = load_suite(name)
    def first_scenario(entry) -> str:
        return next(s.name for s in suite.scenarios if suite.runs_in(entry, s))

    entries = [e for e in suite.optimizers if first_scenario(e) == scenario or e.name == suite.baseline]
    for entry in entries:
        for hparams in points(entry):
            cfg = composed(suite, scenario, entry.name, hparams, seed=7)
            assert cfg.optim.name == entry.name
            for key, value in {**entry.fixed, **hparams}.items():
                assert dotted(cfg.optim, key) == value, f"{name}/{scenario}/{entry.name}: optim.{key}"
            assert (cfg.train.seed, cfg.train.data_seed) == (7, 7)


@pytest.mark.parametrize("name", SUITES)
def test_ladder_rungs_differ_only_in_their_token_budget(name):
    suite = load_suite(name)
    ladders: dict[str, list[str]] = {}
    for scenario in suite.scenarios:
        if scenario.ladder:
            ladders.setdefault(scenario.ladder, []).append(scenario.name)
    for ladder, names in ladders.items():
        assert len(names) >= 2, f"{name}: ladder {ladder} has a single budget"
        configs = [dataclasses.asdict(composed(suite, n)) for n in names]
        steps = [c["train"].pop("steps") for c in configs]
        assert len(set(steps)) == len(steps), f"{name}: ladder {ladder} repeats a budget"
        assert all(c == configs[0] for c in configs), f"{name}: ladder {ladder} differs in more than train.steps"


# ----------------------------------------------------------------------------- small


def test_small_is_a_20m_llama_on_tinystories_for_about_an_hour():
    suite = load_suite("small")
    cfg = composed(suite, suite.scenarios[0].name)
    assert cfg.model.name == "llama" and cfg.data.name == "tinystories"
    assert cfg.data.tokenizer is None and get_recipe("tinystories").tokenizer == "gpt2"
    n = n_params(cfg, GPT2_VOCAB)
    assert abs(n - 20e6) <= 0.25 * 20e6, n
    assert len(suite.optimizers) == 8 and suite.tuning.method == "coordinate" and suite.tuning.trials == 5
    assert len(suite.final.seeds) == 3 and all(s.target_loss for s in suite.scenarios)
    assert {s.ladder for s in suite.scenarios} == {"tinystories-20m"} and len(suite.scenarios) == 3

    # The header's estimate: 6 N tokens at 40% MFU, 5 trials (one round of coordinate descent: 3 lr points,
    # then 2 new values of the second hyperparameter) plus the 2 seeds that do not reuse a trial.
    for entry in suite.optimizers:
        sizes = [len(grid_points(dim)) for dim in search_space(entry).values()]
        assert sizes[0] + sizes[1] - 1 == suite.tuning.trials, entry.name
    extra_seeds = len([s for s in suite.final.seeds if s != suite.tuning.seed])
    runs = len(suite.optimizers) * (suite.tuning.trials + extra_seeds)
    tokens = sum(composed(suite, s.name).train.steps * tokens_per_step(cfg) for s in suite.scenarios) * runs
    hours = 6 * n * tokens / H100_EFFECTIVE_FLOPS / 3600
    assert 0.75 <= hours <= 1.25, hours


# ----------------------------------------------------------------------------- epfl-124m


def test_epfl_124m_matches_the_papers_scripts():
    suite = load_suite("epfl-124m")
    cfg = composed(suite, "cos-16k")
    assert (cfg.train.batch_size * cfg.train.grad_accum, cfg.train.seq_len) == (256, 512)
    assert tokens_per_step(cfg) == 131_072
    assert abs(n_params(cfg, GPT2_VOCAB) - 124e6) <= 0.01 * 124e6
    assert (cfg.data.name, cfg.train.grad_clip, cfg.model.dropout) == ("fineweb", 0.5, 0.0)
    assert (cfg.schedule.name, cfg.schedule.warmup_steps, cfg.schedule.final_lr_frac) == ("cosine", 2000, 0.01)
    wsd = composed(suite, "wsd-16k").schedule
    assert (wsd.name, wsd.decay_frac, wsd.decay_shape, wsd.final_lr_frac) == ("wsd", 0.2, "sqrt", 0.0)
    ladder = [composed(suite, s.name).train.steps for s in suite.scenarios if s.ladder]
    assert ladder == [8000, 16000, 32000, 64000]
    assert max(ladder) * 131_072 < 0.9 * 10e9, "the longest rung fits in one epoch of FineWeb sample-10BT"

    published_lr = {"adamw": 1e-3, "adopt": 1e-3, "ademamix": 1e-3, "lion": 1e-3, "signum": 1e-3,
                    "mars-adamw": 3e-3, "prodigy": 1.0, "soap": 1e-3, "sophiag": 1e-3, "muon": 1e-2, "dmuon": 1e-3,
                    "sf-adamw": 1e-3}
    assert {e.name for e in suite.optimizers} == set(published_lr)
    for name, lr in published_lr.items():
        grid = lr_grid(suite, name)
        assert grid == (lr / 2, lr, 2 * lr), name
        assert suite.optimizer(name).fixed["decay_embeddings"] is False, name
    adamw = composed(suite, "cos-8k", "adamw").optim
    assert (adamw.beta1, adamw.beta2, adamw.weight_decay) == (0.8, 0.999, 0.1)
    ademamix = composed(suite, "cos-8k", "ademamix").optim
    assert (ademamix.beta3, ademamix.alpha, ademamix.alpha_warmup, ademamix.beta3_warmup) == (0.999, 8.0, None, None)
    assert suite.tuning.method == "grid" and len(suite.final.seeds) == 3


# ----------------------------------------------------------------------------- s4s-stage1

S4S_CHINCHILLA = {"llama-60m": (10_000, 1.13), "llama-130m": (20_000, 0.98), "llama-350m": (60_000, 1.07),
                  "llama-1b": (100_000, 0.49)}
"""Scenario -> (steps of the benchmark's launch scripts, tokens / (20 x parameters) as the suite's header says)."""


@pytest.mark.parametrize("scenario", sorted(S4S_CHINCHILLA))
def test_s4s_token_budgets_are_the_stated_chinchilla_multiples(scenario):
    suite = load_suite("s4s-stage1")
    cfg = composed(suite, scenario)
    steps, multiple = S4S_CHINCHILLA[scenario]
    assert cfg.train.steps == steps
    assert (cfg.train.batch_size * cfg.train.grad_accum, cfg.train.seq_len) == (512, 256)
    tokens = steps * tokens_per_step(cfg)
    chinchilla = 20 * n_params(cfg, T5_VOCAB)
    assert abs(tokens - multiple * chinchilla) <= 0.05 * multiple * chinchilla, tokens / chinchilla
    assert cfg.schedule.warmup_steps == steps // 10
    assert (cfg.schedule.name, cfg.schedule.final_lr_frac) == ("cosine", 0.1)


def test_s4s_stage1_protocol():
    suite = load_suite("s4s-stage1")
    assert len(suite.optimizers) == 24 and [s.name for s in suite.scenarios] == list(S4S_CHINCHILLA)
    cfg = composed(suite, "llama-350m")
    assert (cfg.data.name, cfg.data.tokenizer, cfg.train.grad_clip) == ("c4", "hf:t5-base", 1.0)
    model = cfg.model
    assert (model.n_embd, model.n_layer, model.ffn_hidden, model.tie_embeddings) == (1024, 24, 2736, False)
    for entry in suite.optimizers:
        assert entry.fixed["weight_decay"] == 0.0, entry.name
        assert list(search_space(entry)) == ["lr"], f"{entry.name}: the protocol tunes the lr on a grid"
    # the grid spans the published best learning rates of the 350M and 1B launch scripts
    for name, (lr_350m, lr_1b) in {"adamw": (1e-3, 5e-4), "muon": (6e-3, 6e-3), "soap": (1e-3, 5e-4),
                                   "lion": (2e-4, 1e-4), "mars-adamw": (5e-3, 1e-3), "apollo": (1e-2, 1e-2)}.items():
        grid = lr_grid(suite, name)
        assert lr_350m in grid and lr_1b in grid, name
    assert cfg.data.max_tokens >= S4S_CHINCHILLA["llama-1b"][0] * 131_072


# ----------------------------------------------------------------------------- pylo-gpt2


def test_pylo_gpt2_matches_the_published_runs():
    suite = load_suite("pylo-gpt2")
    assert {e.name for e in suite.optimizers} == {"adamw", "velo", "mulo"}
    for scenario, params in {"gpt2-124m-cosine": 124e6, "gpt2-355m-cosine": 355e6}.items():
        cfg = composed(suite, scenario)
        assert (cfg.data.name, cfg.train.seq_len, cfg.model.dropout) == ("fineweb-edu", 1024, 0.1)
        assert tokens_per_step(cfg) == 512 * 1024
        assert abs(cfg.train.steps * tokens_per_step(cfg) - 10e9) <= 0.005 * 10e9
        assert abs(n_params(cfg, GPT2_VOCAB) - params) <= 0.01 * params
        assert (cfg.schedule.warmup_steps, cfg.schedule.final_lr_frac) == (int(0.02 * 19073), 0.1)
    constant = composed(suite, "gpt2-124m-constant").schedule
    assert (constant.name, constant.warmup_steps) == ("constant", 0)
    adamw = composed(suite, "gpt2-124m-cosine", "adamw").optim
    assert (adamw.beta1, adamw.beta2, adamw.weight_decay) == (0.9, 0.95, 0.01) and 1e-3 in lr_grid(suite, "adamw")
    for name in ("velo", "mulo"):
        assert 1.0 in lr_grid(suite, name), "the meta-trained step (PyLO's init_lr 1.0) is a grid point"
    assert composed(suite, "gpt2-124m-cosine", "mulo").optim.max_grad_norm == 1.0
    assert suite.scenario("gpt2-355m-cosine").target_loss == 2.91


# ----------------------------------------------------------------------------- modded-soap


def test_modded_soap_matches_the_records():
    suite = load_suite("modded-soap")
    assert {e.name for e in suite.optimizers} == {"adamw", "muon", "soap", "shampoo"}
    for scenario, warmdown in {"steps-5100": 1450, "steps-7000": 2000}.items():
        cfg = composed(suite, scenario)
        assert cfg.train.seq_len == 1024 and tokens_per_step(cfg) == 524_288
        sched = cfg.schedule
        assert (sched.name, sched.decay_shape, sched.final_lr_frac, sched.warmup_steps) == ("wsd", "linear", 0.0, 250)
        assert abs(sched.decay_frac * cfg.train.steps - warmdown) <= 10
        assert suite.scenario(scenario).target_loss == 3.28
    cfg = composed(suite, "steps-7000")
    assert abs(cfg.train.steps * tokens_per_step(cfg) - 3.67e9) <= 0.005 * 3.67e9
    assert (cfg.data.name, cfg.model.name, cfg.train.grad_clip) == ("fineweb", "gpt2", 0.0)
    assert abs(n_params(cfg, GPT2_VOCAB) - 124e6) <= 0.01 * 124e6
    muon = composed(suite, "steps-5100", "muon").optim
    assert (muon.momentum, muon.nesterov, muon.weight_decay) == (0.95, True, 0.0) and 0.02 in lr_grid(suite, "muon")
    soap = composed(suite, "steps-5100", "soap").optim
    assert (soap.beta1, soap.beta2, soap.precondition_frequency, soap.weight_decay) == (0.95, 0.95, 10, 0.0)
    assert {1.8e-3, 3e-3} <= set(lr_grid(suite, "soap"))
    assert 1.8e-3 in lr_grid(suite, "adamw") and 1.8e-3 in lr_grid(suite, "shampoo")
    assert math.isclose(composed(suite, "steps-5100", "shampoo").optim.grafting_beta2, 0.95)


# ----------------------------------------------------------------------------- s4s-stage2

LLAMA2_VOCAB = 32000
"""flame's configs and the fla-hub/transformer-1.3B-100B tokenizer: LLaMA-2's 32,000 pieces."""
S4S2_CHINCHILLA = {"transformer-340m": 2.15, "transformer-1b": 0.59}
"""Transformer++ scenario -> tokens / (20 x parameters) as the suite's header says."""


@pytest.mark.parametrize("scenario", sorted(S4S2_CHINCHILLA))
def test_s4s_stage2_token_budget_is_the_stated_chinchilla_multiple(scenario):
    cfg = composed(load_suite("s4s-stage2"), scenario)
    assert (cfg.train.steps, tokens_per_step(cfg)) == (30_720, 524_288)  # 8 GPUs x 32,768 tokens x grad acc 2
    tokens = cfg.train.steps * tokens_per_step(cfg)
    chinchilla = 20 * n_params(cfg, LLAMA2_VOCAB)
    multiple = S4S2_CHINCHILLA[scenario]
    assert abs(tokens - multiple * chinchilla) <= 0.01 * multiple * chinchilla, tokens / chinchilla
    assert cfg.data.max_tokens >= tokens


def test_s4s_stage2_protocol():
    suite = load_suite("s4s-stage2")
    families = {composed(suite, s.name).model.name for s in suite.scenarios}
    assert families == {"llama", "gla", "deltanet", "gated-deltanet"} and len(suite.scenarios) == 8
    assert len(suite.optimizers) == 12
    for entry in suite.optimizers:
        assert entry.fixed["weight_decay"] == 0.0, entry.name
        assert list(search_space(entry)) == ["lr"], f"{entry.name}: the protocol tunes the lr on a grid"
    assert suite.tuning.method == "grid" and suite.final.seeds == [0, 1, 2]
    # Stage2-FWE/evaluations/lm_harness/eval_qa.sh: --tasks ... --num_fewshot 0
    assert suite.downstream.tasks == ["wikitext", "lambada_openai", "piqa", "hellaswag", "winogrande", "arc_easy",
                                      "arc_challenge", "boolq", "sciq", "copa", "openbookqa"]
    assert suite.downstream.num_fewshot == 0
