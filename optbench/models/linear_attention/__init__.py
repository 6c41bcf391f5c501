"""Linear-attention families (GLA, DeltaNet, Gated DeltaNet) on the Llama backbone.

recurrent.py defines each recurrence token by token; chunked.py computes the same in chunk-parallel form
in PyTorch; kernels.py picks flash-linear-attention's Triton kernels on CUDA when installed, else ours;
mixers.py holds the three token mixers and families.py registers the model families.
"""

from optbench.models.linear_attention.families import (
    GLA,
    DeltaNet,
    DeltaNetConfig,
    GatedDeltaNet,
    GatedDeltaNetConfig,
    GLAConfig,
)

__all__ = ["GLA", "DeltaNet", "DeltaNetConfig", "GLAConfig", "GatedDeltaNet", "GatedDeltaNetConfig"]
