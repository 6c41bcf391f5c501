"""optbench: benchmark optimizers for language-model pretraining.

    import optbench
    summary = optbench.train(["model=llama", "optim.lr=3e-3", "train.steps=200"])
"""

from __future__ import annotations

__version__ = "0.1.0"

# `optbench.train(cfg)` is the library's entry point; the training loop lives in `optbench.training`, a name of its
# own, so `import optbench.training.trainer` and the function never stand for each other.
from optbench.training import train  # noqa: E402

__all__ = ["train", "__version__"]
