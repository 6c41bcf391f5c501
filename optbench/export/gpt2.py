"""optbench's GPT-2 as transformers' `GPT2LMHeadModel`.

Parameter names already match (optbench/models/gpt2.py follows the HF checkpoint); the layouts differ
in two ways. HF's GPT-2 keeps its projections in `Conv1D` modules, whose weight is (in, out): the transpose of
`nn.Linear`'s (out, in). And HF always has biases, so a `model.bias=false` run gets zero biases, which compute
exactly what no bias does.
"""

from __future__ import annotations

import torch

from optbench.models.gpt2 import GPT2Config

ARCHITECTURE = "GPT2LMHeadModel"
EMBEDDING = "transformer.wte.weight"
"""The token table, by its optbench name."""
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
LAYER_NORM_WEIGHTS = ("ln_1.weight", "ln_2.weight", "ln_f.weight")
LAYER_NORM_EPS = 1e-5
"""nn.LayerNorm's default, which optbench's GPT-2 uses."""


def unsupported(cfg: GPT2Config) -> list[str]:
    """The settings of `cfg` that GPT2LMHeadModel cannot compute exactly."""
    return [setting for setting, on in (
        (f"model.mixer={cfg.mixer}", cfg.mixer != "attention"),  # PoM has no transformers class
        ("model.parallel_block=true", cfg.parallel_block),  # HF runs attention, then the MLP
        ("model.mup=true", cfg.mup),  # muP's 1/d attention and 1/m readout are not HF GPT-2's
    ) if on]


def hf_config(cfg: GPT2Config, vocab_size: int, seq_len: int, eot: int | None, dtype: str) -> dict:
    """config.json of the GPT2LMHeadModel equal to `cfg` (dropout off: an export is for inference)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_positions": seq_len,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": 4 * cfg.n_embd,
        # nn.GELU(approximate="tanh") itself; HF's gelu_new is the same formula in separate ops (rounds differently)
        "activation_function": "gelu_pytorch_tanh",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": cfg.init_std,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "dtype": dtype,
    }


def hf_weights(cfg: GPT2Config, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The GPT2LMHeadModel state dict holding `state` (an optbench GPT-2's)."""
    weights = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            continue  # tied: HF ties lm_head to transformer.wte.weight when it loads
        weights[name] = (tensor.t() if name.endswith(CONV1D_WEIGHTS) else tensor).contiguous()
    if not cfg.bias:
        weights.update(zero_biases(weights))
    return weights


def zero_biases(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A zero bias for every projection and LayerNorm: its length is the weight's last (output) dimension."""
    biased = CONV1D_WEIGHTS + LAYER_NORM_WEIGHTS
    return {name.removesuffix("weight") + "bias": torch.zeros(tensor.shape[-1], dtype=tensor.dtype)
            for name, tensor in weights.items() if name.endswith(biased)}
