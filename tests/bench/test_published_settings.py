"""The seed suites against their sources: each one's published settings, transcribed here by hand from the sources
the suite's header cites (/work/shared/seeds and the scripts/configs named in the header), independently of the
YAML. Every composed (scenario, optimizer) run of the suite is checked against the table, so a drift in either the
YAML or the table fails. Where optbench deliberately differs (said in the suite's header), the table holds
optbench's chosen value and a comment says so.

Tables per suite: SETTING (what every run shares), SCENARIOS (model shape, steps, schedule per scenario) and
OPTIMIZERS (published lr, which must be a point of the lr grid or inside it, and every other published value,
an AdamW part of a matrix optimizer as backup.*).
"""

from __future__ import annotations

import functools

import pytest

from optbench.bench.suite import defaults, load_suite, run_overrides, search_space
from optbench.config.compose import compose
from optbench.data.tokenizers import make_tokenizer
from optbench.errors import UserError
from optbench.optim.search_space import grid_points

# ----------------------------------------------------------------------------- epfl-124m
# epfml/llm-baselines scripts/124m/*.sh + src/main.py (seed 000: the argparse defaults these scripts override).

EPFL_SETTING = {"data.name": "fineweb", "train.seq_len": 512, "sequences": 256, "train.grad_clip": 0.5,
                "model.dropout": 0.0, "model.name": "llama", "model.n_embd": 768, "model.n_head": 12,
                "model.n_layer": 12}
EPFL_COSINE = {"schedule.name": "cosine", "schedule.warmup_steps": 2000, "schedule.final_lr_frac": 0.01}
EPFL_SCENARIOS = {
    "cos-8k": {**EPFL_COSINE, "train.steps": 8000},
    "cos-16k": {**EPFL_COSINE, "train.steps": 16000},
    "cos-32k": {**EPFL_COSINE, "train.steps": 32000},
    "cos-64k": {**EPFL_COSINE, "train.steps": 64000},
    "wsd-16k": {"schedule.name": "wsd", "schedule.warmup_steps": 2000, "schedule.decay_frac": 0.2,
                "schedule.decay_shape": "sqrt", "schedule.final_lr_frac": 0.0, "train.steps": 16000},
    "none-16k": {"schedule.name": "constant", "schedule.warmup_steps": 0, "train.steps": 16000},  # --scheduler none
}
_EPFL_ADAMW_PART = {"backup.lr": 1e-3, "backup.beta1": 0.8, "backup.beta2": 0.999, "backup.weight_decay": 0.1,
                    "backup.decay_embeddings": False}
_NO_EMB_DECAY = {"decay_embeddings": False}  # base.py: the tied embedding is not weight-decayed
EPFL_OPTIMIZERS = {
    "adamw": (1e-3, {"beta1": 0.8, "beta2": 0.999, "weight_decay": 0.1, **_NO_EMB_DECAY}),
    # scripts/124m/sf-adamw.sh + main.py: its own warmup of --warmup_steps, r and weight_lr_power defaults
    "sf-adamw": (1e-3, {"beta1": 0.9, "beta2": 0.9999, "warmup_steps": 2000, "r": 0.0, "weight_lr_power": 2.0,
                        "weight_decay": 0.1, **_NO_EMB_DECAY}),
    "adopt": (1e-3, {"beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "decouple": True, "weight_decay": 0.1,
                     **_NO_EMB_DECAY}),
    "ademamix": (1e-3, {"beta1": 0.9, "beta2": 0.999, "beta3": 0.999, "alpha": 8.0, "alpha_warmup": None,
                        "beta3_warmup": None, "weight_decay": 0.1, **_NO_EMB_DECAY}),
    "lion": (1e-3, {"beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1, **_NO_EMB_DECAY}),
    "signum": (1e-3, {"momentum": 0.9, "weight_decay": 0.1, **_NO_EMB_DECAY}),
    "mars-adamw": (3e-3, {"beta1": 0.95, "beta2": 0.99, "gamma": 0.025, "lr_1d": 1e-3, "beta1_1d": 0.8,
                          "beta2_1d": 0.999, "weight_decay_1d": 0.1, "weight_decay": 0.1, **_NO_EMB_DECAY}),
    "prodigy": (1.0, {"beta1": 0.9, "beta2": 0.999, "use_bias_correction": True, "decouple": True,
                      "weight_decay": 0.1, **_NO_EMB_DECAY}),
    "soap": (1e-3, {"beta1": 0.9, "beta2": 0.999, "precondition_frequency": 10, "weight_decay": 0.1,
                    **_NO_EMB_DECAY}),
    "sophiag": (1e-3, {"beta1": 0.9, "beta2": 0.999, "rho": 0.04, "weight_decay": 0.1, **_NO_EMB_DECAY}),
    "muon": (1e-2, {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "weight_decay": 0.0, **_NO_EMB_DECAY,
                    **_EPFL_ADAMW_PART}),
    "dmuon": (1e-3, {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "weight_decay": 0.1, **_NO_EMB_DECAY,
                     **_EPFL_ADAMW_PART}),
}

# ----------------------------------------------------------------------------- s4s-stage1
# OpenRaiser/OmniOpt README (seed 003) + Stage1 launch scripts; GaLore's llama_*.json shapes.

S4S_SETTING = {"data.name": "c4", "data.tokenizer": "hf:t5-base", "train.seq_len": 256, "sequences": 512,
               "train.grad_clip": 1.0, "schedule.name": "cosine", "schedule.final_lr_frac": 0.1,
               "model.name": "llama", "model.tie_embeddings": False}
S4S_SCENARIOS = {  # GaLore shapes (hidden, heads, layers, SwiGLU), steps, warmup 10%
    "llama-60m": {"model.n_embd": 512, "model.n_head": 8, "model.n_layer": 8, "model.ffn_hidden": 1376,
                  "train.steps": 10_000, "schedule.warmup_steps": 1_000},
    "llama-130m": {"model.n_embd": 768, "model.n_head": 12, "model.n_layer": 12, "model.ffn_hidden": 2048,
                   "train.steps": 20_000, "schedule.warmup_steps": 2_000},
    "llama-350m": {"model.n_embd": 1024, "model.n_head": 16, "model.n_layer": 24, "model.ffn_hidden": 2736,
                   "train.steps": 60_000, "schedule.warmup_steps": 6_000},
    "llama-1b": {"model.n_embd": 2048, "model.n_head": 32, "model.n_layer": 24, "model.ffn_hidden": 5461,
                 "train.steps": 100_000, "schedule.warmup_steps": 10_000},
}
_WD0 = {"weight_decay": 0.0}  # the protocol: no weight decay
S4S_OPTIMIZERS = {  # (published best lr at 350M, at 1B), the other values (the 350M script's where they differ)
    "adamw": ((1e-3, 5e-4), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8, **_WD0}),
    "adabelief": ((1e-3, 1e-3), {"beta1": 0.9, "beta2": 0.999, "eps": 1e-16, **_WD0}),
    "adafactor": ((1e-3, 5e-4), {"decay_rate": -0.8, "eps2": 1e-3, **_WD0}),
    "adam8bit": ((5e-4, 5e-4), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8, **_WD0}),
    "adam-mini": ((5e-4, 3e-4), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8, **_WD0}),
    "adamp": ((1e-3, 5e-4), {"beta1": 0.9, "beta2": 0.98, "eps": 1e-8, "delta": 0.1, "wd_ratio": 0.1, **_WD0}),
    "adan": ((3e-3, 1e-3), {"beta1": 0.9, "beta2": 0.92, "beta3": 0.99, "eps": 1e-8, **_WD0}),
    "came": ((5e-4, 3e-4), {"beta1": 0.9, "beta2": 0.999, "beta3": 0.9999, "eps1": 1e-30, "eps2": 1e-6,
                            "clip_threshold": 1.0, **_WD0}),
    # Conda: 1e-2 at 350M (gap 2000, scale 0.25, used here); the 1B's 5e-4 goes with gap 200, scale 1.0
    "conda": ((1e-2,), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "update_proj_gap": 2000, "scale": 0.25,
                             **_WD0}),
    "galore": ((1e-2, 1e-2), {"beta1": 0.9, "beta2": 0.98, "eps": 1e-6, "rank": 256, "update_proj_gap": 500,
                              "scale": 0.25, **_WD0}),
    "lamb": ((1e-3, 1e-3), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-6, **_WD0}),
    "lion": ((2e-4, 1e-4), {"beta1": 0.9, "beta2": 0.98, **_WD0}),
    # MARS: lr_1d is tied to --lr in S4S; here fixed at the 350M --lr
    "mars-adamw": ((5e-3, 1e-3), {"beta1": 0.95, "beta2": 0.99, "gamma": 0.025, "lr_1d": 5e-3, "beta1_1d": 0.9,
                                  "beta2_1d": 0.95, **_WD0}),
    "mars-lion": ((2e-4, 2e-4), {"beta1": 0.9, "gamma": 0.025, "lr_1d": 2e-4, "beta1_1d": 0.9, "beta2_1d": 0.95,
                                 **_WD0}),
    "mars-shampoo": ((2e-2, 1e-2), {"beta1": 0.95, "beta2": 0.99, "gamma": 0.025, "lr_1d": 2e-2, "beta1_1d": 0.9,
                                    "beta2_1d": 0.95, **_WD0}),
    # --optimizer muon --lr 6e-3 --beta1 0.9 --beta2 0.95 --eps 1e-8: the AdamW part shares lr, betas, eps
    "muon": ((6e-3, 6e-3), {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "backup.lr": 6e-3,
                            "backup.beta1": 0.9, "backup.beta2": 0.95, "backup.eps": 1e-8,
                            "backup.weight_decay": 0.0, **_WD0}),
    "nadam": ((1e-3, 5e-4), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8, **_WD0}),
    "prodigy": ((2.0, 2.0), {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "d_coef": 1.0, **_WD0}),
    "radam": ((1e-3, 5e-4), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8, **_WD0}),
    # RMNP: momentum = --beta1 (0.9 at 350M); AdamW part shares --lr 1e-2 (--adam_lr 1e-2 at 1B)
    "rmnp": ((1e-2, 1e-2), {"momentum": 0.9, "backup.lr": 1e-2, "backup.weight_decay": 0.0, **_WD0}),
    # S4S's "Shampoo" (Adam + Newton-Schulz, 2e-2 / 1e-2) is not optbench's shampoo: no published lr to hold
    "shampoo": (None, {"grafting": "adam", **_WD0}),
    "soap": ((1e-3, 5e-4), {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "precondition_frequency": 10, **_WD0}),
    "sophiag": ((2e-4, 1e-4), {"beta1": 0.9, "beta2": 0.99, "rho": 0.04, **_WD0}),
    "apollo": ((1e-2, 1e-2), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-6, "rank": 256, "update_proj_gap": 200,
                              "scale_type": "channel", "scale": 1.0, **_WD0}),
}

# ----------------------------------------------------------------------------- s4s-stage2
# OpenRaiser/OmniOpt Stage2-FWE/trainer/flame/scripts/run_340m.sh and run_1b.sh + opentome/utils/optimization.py;
# flame's configs/*_340M.json and *_1B.json (hidden size, layers, heads).

S4S2_SETTING = {"data.name": "fineweb-edu-100bt", "data.tokenizer": "hf:fla-hub/transformer-1.3B-100B",
                "train.seq_len": 4096, "sequences": 128, "train.steps": 30720, "train.grad_clip": 1.0,
                "schedule.name": "cosine", "schedule.warmup_steps": 1024, "schedule.final_lr_frac": 0.1,
                "model.tie_embeddings": False, "model.norm_eps": 1e-6}
_S2_340M, _S2_1B = {"model.n_embd": 1024, "model.n_layer": 24}, {"model.n_embd": 2048, "model.n_layer": 24}
S4S2_SCENARIOS = {
    "transformer-340m": {**_S2_340M, "model.name": "llama", "model.n_head": 16, "model.ffn_dim": 2816},
    "gla-340m": {**_S2_340M, "model.name": "gla", "model.n_head": 4},
    "deltanet-340m": {**_S2_340M, "model.name": "deltanet", "model.n_head": 8},
    "gated-deltanet-340m": {"model.n_embd": 1024, "model.n_layer": 21, "model.name": "gated-deltanet",
                            "model.n_mixer_head": 6},
    "transformer-1b": {**_S2_1B, "model.name": "llama", "model.n_head": 32, "model.ffn_dim": 5632},
    "gla-1b": {**_S2_1B, "model.name": "gla", "model.n_head": 4},
    "deltanet-1b": {**_S2_1B, "model.name": "deltanet", "model.n_head": 16},
    "gated-deltanet-1b": {"model.n_embd": 2048, "model.n_layer": 21, "model.name": "gated-deltanet",
                          "model.n_mixer_head": 6},
}
S4S2_OPTIMIZERS = {  # (published best lr at 340M, at 1B), the other values (the 340M script's where they differ)
    "adamw": ((1e-3, 1e-3), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-15, **_WD0}),
    "adamp": ((1e-3, 1e-3), {"beta1": 0.9, "beta2": 0.98, "eps": 1e-15, **_WD0}),
    "adan": ((1e-3, 3e-3), {"beta1": 0.9, "beta2": 0.92, "beta3": 0.99, "eps": 1e-8, **_WD0}),  # OPT_BETA3=0.99
    "lion": ((3e-4, 3e-4), {"beta1": 0.9, "beta2": 0.99, **_WD0}),
    # MARS: betas_1d = (B1, B2) and lr_1d = --lr in the factory; lr_1d fixed here at the 340M --lr
    "mars-adamw": ((1e-3, 3e-3), {"beta1": 0.95, "beta2": 0.99, "eps": 1e-8, "gamma": 0.025, "lr_1d": 1e-3,
                                  "beta1_1d": 0.95, "beta2_1d": 0.99, "weight_decay_1d": 0.0, **_WD0}),
    "mars-lion": ((2e-4, 2e-4), {"beta1": 0.9, "eps": 1e-12, "gamma": 0.025, "lr_1d": 2e-4, "beta1_1d": 0.9,
                                 "beta2_1d": 0.98, "weight_decay_1d": 0.0, **_WD0}),
    "mars-shampoo": ((1e-2, 1e-2), {"beta1": 0.95, "beta2": 0.99, "eps": 1e-12, "gamma": 0.025, "lr_1d": 1e-2,
                                    "beta1_1d": 0.95, "beta2_1d": 0.99, "weight_decay_1d": 0.0, **_WD0}),
    # Muon: momentum 0.95 (class default), AdamW part at adam_lr = --lr with betas (B1, B2) and --eps
    "muon": ((3e-3, 5e-3), {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "backup.lr": 3e-3,
                            "backup.beta1": 0.9, "backup.beta2": 0.95, "backup.eps": 1e-15,
                            "backup.weight_decay": 0.0, **_WD0}),
    # RMNP: momentum 0.95 in the factory; AdamW part at ADAM_LR 1e-3, betas (B1, B2), --eps
    "rmnp": ((3e-3, 5e-3), {"momentum": 0.95, "backup.lr": 1e-3, "backup.beta1": 0.9, "backup.beta2": 0.99,
                            "backup.eps": 1e-15, "backup.weight_decay": 0.0, **_WD0}),
    "soap": ((3e-3, 3e-3), {"beta1": 0.9, "beta2": 0.95, "eps": 1e-15, "precondition_frequency": 10,
                            "max_precond_dim": 10000, **_WD0}),
    "apollo": ((3e-3, 3e-3), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-12, "rank": 512, "scale": 2.0,
                              "update_proj_gap": 200, "scale_type": "channel", **_WD0}),
    # Conda: 1e-2 at 340M (gap 2000, scale 0.25, used here); the 1B's 5e-4 goes with gap 200, scale 1.0
    "conda": ((1e-2,), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-12, "update_proj_gap": 2000, "scale": 0.25,
                        **_WD0}),
}

# ----------------------------------------------------------------------------- pylo-gpt2
# Belilovsky-Lab/pylo_examples language_model_pretraining (seed 001): README commands, jobs, config.py, train.py.

PYLO_SETTING = {"data.name": "fineweb-edu", "train.seq_len": 1024, "sequences": 512, "train.steps": 19073,
                "model.dropout": 0.1, "model.name": "gpt2", "train.grad_clip": 0.0}
_PYLO_COSINE = {"schedule.name": "cosine", "schedule.warmup_steps": 381, "schedule.final_lr_frac": 0.1}  # 2%
_PYLO_CONSTANT = {"schedule.name": "constant", "schedule.warmup_steps": 0}  # use_lr_scheduler False
_GPT2_SMALL = {"model.n_embd": 768, "model.n_layer": 12, "model.n_head": 12}
_GPT2_MEDIUM = {"model.n_embd": 1024, "model.n_layer": 24, "model.n_head": 16}  # gpt2_410m_w1024_d24_h16
PYLO_SCENARIOS = {
    "gpt2-124m-cosine": {**_GPT2_SMALL, **_PYLO_COSINE, "model.mup": False},
    "gpt2-124m-constant": {**_GPT2_SMALL, **_PYLO_CONSTANT, "model.mup": False},
    "gpt2-124m-constant-mup": {**_GPT2_SMALL, **_PYLO_CONSTANT, "model.mup": True},  # muLO's MuGPT
    "gpt2-355m-cosine": {**_GPT2_MEDIUM, **_PYLO_COSINE, "model.mup": False},
}
PYLO_OPTIMIZERS = {
    "adamw": (1e-3, {"beta1": 0.9, "beta2": 0.95, "weight_decay": 0.01}),
    "velo": (1.0, {"weight_decay": 0.0}),
    "mulo": (1.0, {"weight_decay": 0.0, "max_grad_norm": 1.0}),
}

# ----------------------------------------------------------------------------- modded-soap
# KellerJordan/modded-nanogpt records + the SOAP Hydra fork (seed 002).

MODDED_SETTING = {"data.name": "fineweb", "train.seq_len": 1024, "sequences": 512, "train.grad_clip": 0.0,
                  "model.name": "gpt2", "model.n_embd": 768, "model.n_layer": 12, "model.n_head": 12,
                  "model.dropout": 0.0, "model.bias": False}
_TRAPEZOID = {"schedule.name": "wsd", "schedule.warmup_steps": 250, "schedule.decay_shape": "linear",
              "schedule.final_lr_frac": 0.0}
MODDED_SCENARIOS = {  # (steps, published warmdown steps): 10/29 optimizers, 10/04 SOAP, 06/06 AdamW record
    "steps-5100": {**_TRAPEZOID, "train.steps": 5100, "warmdown": 1450},
    "steps-7000": {**_TRAPEZOID, "train.steps": 7000, "warmdown": 2000},
    "steps-9536": {**_TRAPEZOID, "train.steps": 9536, "warmdown": None},
}
MODDED_OPTIMIZERS = {
    "adamw": (1.8e-3, {"beta1": 0.9, "beta2": 0.95, "weight_decay": 0.0}),
    "muon": (0.02, {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "weight_decay": 0.0, "backup.lr": 3.6e-3,
                    "backup.beta1": 0.9, "backup.beta2": 0.95, "backup.weight_decay": 0.0}),
    "soap": ((1.8e-3, 3e-3), {"beta1": 0.95, "beta2": 0.95, "precondition_frequency": 10, "weight_decay": 0.0}),
    "shampoo": (1.8e-3, {"beta1": 0.95, "beta2": 0.95, "epsilon": 1e-12, "precondition_frequency": 10,
                         "max_preconditioner_dim": 8192, "grafting": "adam", "grafting_beta2": 0.95,
                         "grafting_eps": 1e-8, "weight_decay": 0.0}),
}

ONLY_IN = {  # optimizers the sources run in one setting of their own; every other runs in every scenario
    "epfl-124m": {"sf-adamw": ["none-16k"]},
    "pylo-gpt2": {"mulo": ["gpt2-124m-constant-mup"],  # PyLO's MuLO needs its muP MuGPT
                  "velo": ["gpt2-124m-cosine", "gpt2-124m-constant", "gpt2-355m-cosine"]},
}

PUBLISHED = {
    "epfl-124m": (EPFL_SETTING, EPFL_SCENARIOS, EPFL_OPTIMIZERS),
    "s4s-stage1": (S4S_SETTING, S4S_SCENARIOS, S4S_OPTIMIZERS),
    "s4s-stage2": (S4S2_SETTING, S4S2_SCENARIOS, S4S2_OPTIMIZERS),
    "pylo-gpt2": (PYLO_SETTING, PYLO_SCENARIOS, PYLO_OPTIMIZERS),
    "modded-soap": (MODDED_SETTING, MODDED_SCENARIOS, MODDED_OPTIMIZERS),
}


def dotted(obj, key: str):
    return functools.reduce(getattr, key.split("."), obj)


def _check_run(cfg, expected: dict, where: str) -> None:
    for key, value in expected.items():
        if key == "sequences":
            assert cfg.train.batch_size * cfg.train.grad_accum == value, f"{where}: sequences per step"
        elif key == "warmdown":
            if value is not None:
                assert abs(cfg.schedule.decay_frac * cfg.train.steps - value) <= 10, f"{where}: warmdown"
        else:
            got = dotted(cfg, key)
            assert got == value, f"{where}: {key} = {got!r}, published {value!r}"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_composed_run_has_the_published_settings(name):
    setting, scenarios, optimizers = PUBLISHED[name]
    suite = load_suite(name)
    assert [s.name for s in suite.scenarios] == list(scenarios), f"{name}: scenarios differ from the table"
    assert sorted(o.name for o in suite.optimizers) == sorted(optimizers), f"{name}: optimizers differ"
    for entry in suite.optimizers:
        lrs, values = optimizers[entry.name]
        grid = grid_points(search_space(entry)["lr"])
        for lr in (lrs if isinstance(lrs, tuple) else (lrs,)) if lrs is not None else ():
            assert min(grid) <= lr <= max(grid), f"{name}/{entry.name}: published lr {lr} outside the grid {grid}"
        if lrs is not None and not isinstance(lrs, tuple):
            assert lrs in grid, f"{name}/{entry.name}: published lr {lrs} is not a grid point {grid}"
        start = defaults(entry)
        point = {key: start[key] for key in search_space(entry)}  # the run coordinate descent starts from
        only = ONLY_IN.get(name, {}).get(entry.name)
        assert entry.scenarios == only, f"{name}/{entry.name}: runs in {entry.scenarios}, published {only}"
        # A scenario may not set optim.* and an optimizer entry only its own hyperparameters (suite.validate), so
        # an optimizer's values are the same in every scenario it runs in: composed in its first, they are checked
        # there; each scenario's settings are checked with the baseline, which runs in every one.
        scenario = next(s for s in suite.scenarios if suite.runs_in(entry, s))
        where = f"{name}/{scenario.name}/{entry.name}"
        cfg = compose(run_overrides(suite, scenario, entry, point, seed=0))
        _check_run(cfg, {**setting, **scenarios[scenario.name]}, where)
        _check_run(cfg.optim, values, where)
    baseline = suite.optimizer(suite.baseline)
    for scenario in suite.scenarios:
        cfg = compose(run_overrides(suite, scenario, baseline, {}, seed=0))
        _check_run(cfg, {**setting, **scenarios[scenario.name]}, f"{name}/{scenario.name}/{baseline.name}")


def test_s4s_t5_tokenizer_spec_parses_from_the_mirror_and_fails_clearly_offline(tmp_path, hf_tokenizer_json):
    suite = load_suite("s4s-stage1")
    spec = compose(run_overrides(suite, suite.scenarios[0], suite.optimizer("adamw"), {}, 0)).data.tokenizer
    with pytest.raises(UserError) as error:  # tests run offline (conftest: HF_HUB_OFFLINE)
        make_tokenizer(spec, tmp_path)
    assert "\n" not in str(error.value)
    assert "https://huggingface.co/t5-base/resolve/main/tokenizer.json" in str(error.value)
    (tmp_path / "tokenizers" / "t5-base").mkdir(parents=True)
    hf_tokenizer_json(tmp_path / "tokenizers" / "t5-base" / "tokenizer.json")  # a stand-in for the real file
    assert make_tokenizer(spec, tmp_path).name == "hf:t5-base"
