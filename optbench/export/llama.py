"""optbench's Llama as transformers' `LlamaForCausalLM`.

Only names change: optbench's rotary embedding already uses HF's rotate-half layout (the first half of each
head paired with the second), so q and k need no permutation; the layers compute the same functions
(RMSNorm in float32 times its gain, SwiGLU, no biases, grouped key/value heads).
"""

from __future__ import annotations

import torch

from optbench.models.llama import LlamaConfig

ARCHITECTURE = "LlamaForCausalLM"
EMBEDDING = "tok_embeddings.weight"
"""The token table, by its optbench name."""
TOP_LEVEL = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
LAYER_MODULES = {"attn": "self_attn", "mlp": "mlp", "attn_norm": "input_layernorm",
                 "mlp_norm": "post_attention_layernorm"}


def unsupported(cfg: LlamaConfig) -> list[str]:
    """The settings of `cfg` that LlamaForCausalLM cannot compute exactly."""
    return [setting for setting, on in (
        ("model.qk_norm=true", cfg.qk_norm),  # HF Llama has no q/k norms
        ("model.parallel_block=true", cfg.parallel_block),  # HF runs attention, then the MLP
        ("model.mup=true", cfg.mup),  # muP's 1/d attention and 1/m readout are not HF Llama's
    ) if on]


def hf_config(cfg: LlamaConfig, vocab_size: int, seq_len: int, eot: int | None, dtype: str) -> dict:
    """config.json of the LlamaForCausalLM equal to `cfg` (dropout off: an export is for inference)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.n_embd // cfg.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": seq_len,
        "rms_norm_eps": cfg.norm_eps,
        # rope_parameters for transformers 5; the flat rope_theta for 4.x, which ignores the other
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "dtype": dtype,
    }


def hf_weights(cfg: LlamaConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LlamaForCausalLM state dict holding `state` (an optbench Llama's)."""
    skip = {"output.weight"} if cfg.tie_embeddings else set()  # HF ties lm_head to embed_tokens when it loads
    return {hf_name(name): tensor.contiguous() for name, tensor in state.items() if name not in skip}


def hf_name(name: str) -> str:
    """`layers.3.attn.q_proj.weight` -> `model.layers.3.self_attn.q_proj.weight`, and the top-level renames."""
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    prefix, index, module, rest = (name.split(".", 3) + ["", "", ""])[:4]
    if prefix != "layers" or module not in LAYER_MODULES:
        raise KeyError(f"no LlamaForCausalLM name for optbench parameter '{name}'")  # a Llama changed, not the user
    return f"model.layers.{index}.{LAYER_MODULES[module]}.{rest}"
