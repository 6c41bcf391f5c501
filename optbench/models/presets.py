"""The model presets (YAML files under configs/model) with their sizes, for `optbench model list`."""

from __future__ import annotations

import torch

from optbench.models.registry import build

GPT2_VOCAB = 50257
"""Presets are sized with the GPT-2 tokenizer's vocabulary unless they fix their own."""


def preset_table(seq_len: int = 1024) -> list[dict]:
    """One row per model choice: family, shape and parameter counts (built on the meta device)."""
    from optbench.config.compose import compose, group_options

    rows = []
    for preset in sorted(group_options("model")):
        cfg = compose([f"model={preset}"]).model
        with torch.device("meta"):
            model = build(cfg, GPT2_VOCAB, seq_len)
        rows.append({"preset": preset, "family": cfg.name, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                     "n_embd": cfg.n_embd, "params": model.num_params(),
                     "params_non_embedding": model.num_params(embeddings=False),
                     "params_active": model.num_active_params()})
    return rows
