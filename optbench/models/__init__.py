"""Model families. Importing this package registers every family in `MODELS`; a plugin adds one with the same
`register` (optbench/plugins.py)."""

from optbench.models import linear_attention
from optbench.models.gpt2 import GPT2, GPT2Config
from optbench.models.llama import Llama, LlamaConfig
from optbench.models.moe import MoE, MoEConfig
from optbench.models.registry import MODELS, ModelSpec, build, config_classes, model_vocab_size, register

__all__ = ["GPT2", "GPT2Config", "MODELS", "Llama", "LlamaConfig", "MoE", "MoEConfig", "ModelSpec", "build",
           "config_classes", "linear_attention", "model_vocab_size", "register"]
