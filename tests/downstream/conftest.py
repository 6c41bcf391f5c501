"""torch on one thread in these tests: tiny models gain nothing from a second, and on a machine whose two cores are
busy with other tests, two threads wait on each other (a forward pass goes from under a millisecond to ~0.1 s)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
