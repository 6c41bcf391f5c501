"""optbench: benchmark optimizers for language-model pretraining.

    import optbench
    summary = optbench.train(["model=llama", "optim.lr=3e-3", "train.steps=200"])
"""

from __future__ import annotations

__version__ = "0.1.0"

# The function deliberately shadows the `optbench.train` subpackage as an attribute: `optbench.train(cfg)`
# is the library entry point, while `from optbench.train import trainer` still finds the subpackage.
from optbench.train import train  # noqa: E402

__all__ = ["train", "__version__"]
