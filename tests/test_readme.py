"""What the README and the package description say about the registry is what the registry holds."""

import re
import tomllib
from pathlib import Path

from optbench import optim

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_and_pyproject_count_and_list_every_registered_optimizer():
    """Adapters (optim=torch) wrap other classes: they are named in the row but not counted as optimizers."""
    readme = (ROOT / "README.md").read_text()
    algorithms = [name for name in optim.names() if not optim.get(name).adapter]
    count = len(algorithms)
    row = next(line for line in readme.splitlines() if line.startswith("| `optim` |"))
    assert re.search(rf"\b{count} optimizers: `([^`]*)`", row).group(1).split() == algorithms
    for adapter in sorted(set(optim.names()) - set(algorithms)):
        assert f"adapter `{adapter}`" in row
    assert f"the {count} optimizers" in readme
    description = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["description"]
    assert f"{count} optimizers" in description
