"""Published learned-optimizer weights: found locally or on the Hugging Face hub, loaded with safetensors.

PyLO publishes each meta-trained network through huggingface_hub's PyTorchModelHubMixin: a repository (or a
downloaded copy of one) holds `config.json` (the network's constructor arguments) and `model.safetensors`
(its state dict, under the tensor names of PyLO's module). Our modules in velo_net.py / mulo_net.py use the
same names and constructor arguments, so those files load as they are, and `save_net` writes files PyLO's
`from_pretrained` reads. Loading never unpickles: safetensors only.

Where the files come from (`optim.weights`):
    a local directory  holding config.json + model.safetensors, or a subfolder named after the network
                       (VeLO's two networks side by side: DIR/VeLO_RNN/, DIR/VeLO_MLP/)
    a hub repo id      "owner/name", downloaded into the huggingface_hub cache (used offline once cached)
Anything else, or a hub that cannot be reached, is one UserError naming the repo ids and `optim.weights=PATH`.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from optbench.errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Published:
    """One meta-trained network as PyLO publishes it."""

    label: str
    """PyLO's name for it (the hub repo's name, e.g. VeLO_RNN): the subfolder it has in a combined directory."""
    repo_id: str
    """The hub repository PyLO's code downloads it from."""


def locate(source: str, net: Published, subfolder: bool, hint: str) -> Path:
    """The directory with `net`'s config.json and model.safetensors: `source` as a local directory (the files
    in it, or with `subfolder` in DIR/<net.label>/), else `source` as a hub repo id (downloaded). `hint`
    ends the one-line error: where to get the weights."""
    path = Path(source).expanduser()
    candidates = ([path / net.label] if subfolder else []) + [path]
    for candidate in candidates:
        if (candidate / CONFIG_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            return candidate
    where = " or ".join(f"'{c}'" for c in candidates)
    if path.exists() or not REPO_ID.match(source):
        raise UserError(f"no {net.label} weights ({CONFIG_FILE} + {WEIGHTS_FILE}) in {where}; {hint}")
    try:
        return _download(source, net.label if subfolder else None)
    except Exception as error:  # any failure of the hub (offline, unknown repo, network): one line
        raise UserError(f"no {net.label} weights: no local directory '{source}', and the Hugging Face hub repo "
                        f"'{source}' could not be fetched ({type(error).__name__}); {hint}") from None


def _download(repo_id: str, subfolder: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    config = hf_hub_download(repo_id, CONFIG_FILE, subfolder=subfolder)
    hf_hub_download(repo_id, WEIGHTS_FILE, subfolder=subfolder)
    return Path(config).parent


def construct(cls: type[nn.Module], config: dict, what: str) -> nn.Module:
    """`cls(**config)` with only the keys its constructor takes (PyTorchModelHubMixin's config.json may hold
    more); its default initialisation draws from a forked RNG, so building leaves the global stream alone
    (every tensor is then loaded or filled anyway)."""
    if not isinstance(config, dict):
        raise UserError(f"{what}: {CONFIG_FILE} must hold a JSON object, not {type(config).__name__}")
    known = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {key: value for key, value in config.items() if key in known}
    try:
        with torch.random.fork_rng(devices=[]):
            net = cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as error:
        raise UserError(f"{what}: {CONFIG_FILE} does not describe a {cls.__name__} ({error})") from None
    return net.requires_grad_(False)


def load_net(directory: Path, cls: type[nn.Module], what: str) -> nn.Module:
    """The network `directory` holds: built from its config.json, its tensors from model.safetensors under
    exactly our (= PyLO's) names. Tensors the module lists in `optional_keys()` may be absent (set to zeros)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{what}: cannot read {directory / CONFIG_FILE} ({type(error).__name__})") from None
    net = construct(cls, config, what)
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (OSError, SafetensorError) as error:
        raise UserError(f"{what}: cannot read {directory / WEIGHTS_FILE} ({error})") from None
    expected = net.state_dict()
    optional = net.optional_keys() if hasattr(net, "optional_keys") else ()
    missing = sorted(set(expected) - set(tensors) - set(optional))
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = sorted(k for k in set(tensors) & set(expected) if tensors[k].shape != expected[k].shape)
    if missing or unexpected or misshapen:
        problems = [f"{label} {keys[:3]}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)) if keys]
        raise UserError(f"{what}: {directory / WEIGHTS_FILE} does not fit the {cls.__name__} its {CONFIG_FILE} "
                        f"describes ({'; '.join(problems)})")
    with torch.no_grad():
        for key, tensor in expected.items():
            if key in tensors:
                tensor.copy_(tensors[key].float())
            else:
                tensor.zero_()
    return net


def save_net(net: nn.Module, config: dict, directory: str | Path) -> Path:
    """Write `net` as PyLO's hub repos hold it (config.json + model.safetensors), e.g. a random one for tests."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = {key: value.detach().cpu().contiguous() for key, value in net.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    return directory


@torch.no_grad()
def randomize_(net: nn.Module, seed: int) -> nn.Module:
    """Deterministic random weights (for tests): N(0, 1/fan_in) for weights, with fan_in the last dimension
    (so outputs stay O(1)); zeros for biases and the LSTM's initial state. Tensors filled in name order."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in sorted(net.state_dict().items()):
        if "bias" in name or "init_state" in name:
            tensor.zero_()
        else:
            tensor.copy_(torch.randn(tensor.shape, generator=generator) / math.sqrt(tensor.shape[-1]))
    return net
