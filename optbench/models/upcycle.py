"""Sparse upcycling: start a mixture of experts from a dense Llama checkpoint (Komatsuzaki et al. 2022,
"Sparse Upcycling: Training Mixture-of-Experts from Dense Checkpoints", arXiv 2212.05055).

Every weight of the MoE model takes the dense weight of the same name; each expert (routed and shared) of
layer i takes a copy of the dense `layers.i.mlp`; the router keeps its fresh init. With top_k equal experts
and combine weights summing to 1 (topk_softmax, no shared experts) the upcycled model computes exactly the
dense model's function, and training then lets the experts diverge. As in the paper, only weights carry
over (the optimizer starts fresh). llm-baselines does the same renaming in `convert_dense_to_sparse`
(src/models/mup.py @ c8a5105d); written anew here with checks that the two architectures match.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from optbench.errors import UserError, check
from optbench.models.layers import CausalLM
from optbench.training import checkpoint

EXPERT = re.compile(r"\.mlp\.(experts|shared)\.\d+\.")
ROUTER = re.compile(r"\.mlp\.router\.weight$")
LAYER = re.compile(r"^layers\.(\d+)\.")


def load_dense_state(source: str, device: torch.device) -> dict[str, torch.Tensor]:
    """The model state of a run directory's newest good checkpoint, or of one checkpoint file."""
    path = Path(source).expanduser()
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = checkpoint.CheckpointStore(folder).latest(device)
        check(found is not None, f"model.upcycle_from={source} holds no usable checkpoint (looked in {folder})")
        payload = found[1]
    else:
        check(path.is_file(), f"model.upcycle_from={source} is neither a run directory nor a checkpoint file")
        try:
            payload = checkpoint.load(path, device)
        except checkpoint.CorruptCheckpoint as err:
            raise UserError(f"model.upcycle_from={source} is not a usable checkpoint ({err})") from None
    check(isinstance(payload.get("model"), dict), f"model.upcycle_from={source} holds no model state")
    return payload["model"]


def dense_name(name: str) -> str | None:
    """The dense parameter an MoE parameter starts from; None for the router (kept fresh)."""
    return None if ROUTER.search(name) else EXPERT.sub(".mlp.", name)


def check_shapes_match(model: CausalLM, dense: dict[str, torch.Tensor], source: str) -> None:
    """One-line errors for a dense model of another shape: layers, width, vocabulary, tying, any weight."""
    cfg = model.cfg
    check("tok_embeddings.weight" in dense, f"model.upcycle_from={source} is not a llama checkpoint")
    vocab, width = dense["tok_embeddings.weight"].shape
    check(width == cfg.n_embd, f"model.upcycle_from={source} has n_embd={width}, this model.n_embd={cfg.n_embd}")
    own_vocab = model.tok_embeddings.weight.size(0)
    check(vocab == own_vocab, f"model.upcycle_from={source} has a vocabulary of {vocab}, this model {own_vocab} "
                              "(use the dense run's data and tokenizer)")
    layers = {int(m.group(1)) for key in dense if (m := LAYER.match(key))}
    check(len(layers) == cfg.n_layer,
          f"model.upcycle_from={source} has {len(layers)} layers, this model.n_layer={cfg.n_layer}")
    tied = "output.weight" not in dense or torch.equal(dense["output.weight"], dense["tok_embeddings.weight"])
    check(tied or not cfg.tie_embeddings,
          f"model.upcycle_from={source} has an untied head; set model.tie_embeddings=false to keep it")
    for name, tensor in model.state_dict().items():
        source_name = dense_name(name)
        if source_name is None:
            continue
        check(source_name in dense, f"model.upcycle_from={source} has no {source_name} (model.qk_norm differs?)")
        check(dense[source_name].shape == tensor.shape,
              f"model.upcycle_from={source}: {source_name} is {tuple(dense[source_name].shape)} there, "
              f"{tuple(tensor.shape)} here (n_head, n_kv_head, expert_hidden must match the dense model's)")
    used = {dense_name(name) for name in model.state_dict()}
    unused = sorted(set(dense) - used)
    if unused:
        raise UserError(f"model.upcycle_from={source} has {unused[0]}, which this model lacks (model.qk_norm differs?)")


@torch.no_grad()
def upcycle(model: CausalLM, source: str) -> None:
    """Overwrite `model`'s weights (an MoE) with the dense checkpoint at `source`, experts copied from the MLP."""
    device = next(model.parameters()).device
    dense = load_dense_state(source, device)
    check_shapes_match(model, dense, source)
    for name, tensor in model.state_dict().items():  # these share storage with the parameters
        source_name = dense_name(name)
        if source_name is not None:
            tensor.copy_(dense[source_name])
