"""Optimizer state reloads in the dtypes it was saved in (optim/state_dtypes.py): SOAP's float32 factors and bases
over float64 parameters (train.dtype=float64) stay float32, so a reloaded optimizer steps as the original does."""

import copy

import torch
from torch import nn

from optbench import optim


def trained_soap(model: nn.Module, steps: int) -> torch.optim.Optimizer:
    optimizer = optim.create("soap", model, lr=1e-2, precondition_frequency=1)
    for step in range(steps):
        model.zero_grad(set_to_none=True)
        x = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        model(x).square().sum().backward()
        optimizer.step()
    return optimizer


def test_reloaded_state_keeps_its_float32_parts_and_steps_as_the_original():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4)).double()
    twin = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4)).double()
    original = trained_soap(model, 3)
    twin.load_state_dict(model.state_dict())
    reloaded = optim.create("soap", twin, lr=1e-2, precondition_frequency=1)
    reloaded.load_state_dict(copy.deepcopy(original.state_dict()))  # as from a checkpoint: no tensor shared

    def dtypes(opt):
        return [(key, t.dtype) for s in opt.state.values() for key, v in s.items()
                for t in (v if isinstance(v, list) else [v]) if isinstance(t, torch.Tensor)]

    assert ("GG", torch.float32) in dtypes(original) and ("exp_avg", torch.float64) in dtypes(original)
    assert dtypes(reloaded) == dtypes(original)
    x = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    for net, opt in ((model, original), (twin, reloaded)):
        net.zero_grad(set_to_none=True)
        net(x).square().sum().backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
